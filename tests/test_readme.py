"""The README's examples run, so that they cannot drift from the code again.

Every ```python and ```bash block of README.md is preceded by a marker line
``<!-- readme-test: SETUP -->`` naming the set-up below that gives the block the names it uses (a model,
inputs, files in the working folder), or ``<!-- readme-test: skip REASON -->`` for a block that only
installs or only runs a benchmark. Python blocks are executed; in bash blocks, each line that starts with
``attribx `` is run (the rest of the line after ``#`` is a comment). A block without a marker fails the
test, so a new example cannot be added untested.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import attribx

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```",
                   re.S)


def blocks():
    out = []
    for k, m in enumerate(FENCE.finditer(README.read_text(encoding="utf-8"))):
        line = README.read_text(encoding="utf-8")[:m.start()].count("\n") + 1
        out.append(pytest.param(m["marker"], m["lang"], m["code"], line, id=f"line{line}-{m['lang']}"))
    return out


# ----------------------------------------------------------------------------------------------------
# set-ups: each returns the namespace the block reads (and may write files into the working folder)
# ----------------------------------------------------------------------------------------------------

def _digits_graph():
    """A digits-sized CNN written with the builder, its nodes named as the torch DigitsCNN's."""
    rng = np.random.default_rng(0)
    b = attribx.GraphBuilder("digits")
    h = b.input("x", (1, 8, 8), layout="NCHW")
    h = b.relu(b.conv(h, rng.normal(size=(8, 1, 3, 3)) * 0.5, rng.normal(size=8) * 0.1, padding=1, name="conv1"))
    h = b.relu(b.conv(h, rng.normal(size=(16, 8, 3, 3)) * 0.2, rng.normal(size=16) * 0.1, padding=1, name="conv2"))
    h = b.flatten(b.max_pool(h, 2, name="pool"))
    h = b.relu(b.linear(h, rng.normal(size=(32, 256)) * 0.1, rng.normal(size=32) * 0.1, name="fc1"))
    return b.build(b.linear(h, rng.normal(size=(10, 32)) * 0.2, name="fc2"))


def _digits_inputs(n=4):
    return np.random.default_rng(1).normal(size=(n, 1, 8, 8)).astype(np.float32)


def _text_graph():
    rng = np.random.default_rng(2)
    b = attribx.GraphBuilder("text")
    e = b.add_node("embedding", b.input("ids", (6,), layout="NT", dtype="int64"), name="emb",
                   params={"weight": rng.normal(size=(9, 4))})
    return b.build(b.linear(b.reduce_mean(e, axes=1), rng.normal(size=(2, 4)), np.zeros(2), name="head"))


def _text_inputs():
    ids = np.array([[3, 5, 1, 2, 0, 0], [4, 4, 8, 7, 6, 0]])
    vocab = np.array(["<pad>"] + [f"w{i}" for i in range(1, 9)])
    return ids, vocab[ids].tolist()


def setup_graph(tmp):
    """``model`` (any model; here an attribx graph, so that the block runs without a framework) and
    ``x``, ``text_model``, ``ids``, ``words``."""
    ids, words = _text_inputs()
    model, x = _digits_graph(), _digits_inputs()
    attribx.save(attribx.explain(model, x, "lrp.epsilon"), "relevance.h5")     # what an earlier block wrote
    return {"model": model, "x": x, "text_model": _text_graph(), "ids": ids, "words": words}


def setup_torch(tmp):
    """Names as in the PyTorch section: a torch model and a (N, 3, 224, 224) batch."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("attribx_torch")
    pytest.importorskip("torchvision")
    return {"x": torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))}


def setup_keras(tmp):
    """A channels-last batch, and a small Keras model for those images saved as ``net.keras``."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("attribx_tf")
    small = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Conv2D(2, 8, strides=8, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    small.save("net.keras")
    return {"x": np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)}


def setup_onnx(tmp):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("attribx_onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(size=(2 * 6 * 6, 4)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w, fc])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), "net.onnx")
    return {"x": rng.normal(size=(2, 3, 8, 8)).astype(np.float32)}


def setup_cli(tmp):
    """The files the command-line examples name: a graph, inputs, and token relevance to render."""
    _digits_graph().save("model.npz")
    x = _digits_inputs()
    np.savez("inputs.npz", x=x)
    np.save("x.npy", x)
    ids, words = _text_inputs()
    attribx.save(attribx.explain(_text_graph(), ids, "lrp.epsilon", tokens=words, pad_id=0), "text.h5")
    return {}


SETUPS = {name[len("setup_"):]: fn for name, fn in globals().items() if name.startswith("setup_")}


@pytest.mark.parametrize("marker, lang, code, line", blocks())
def test_readme_example_runs(marker, lang, code, line, tmp_path, monkeypatch):
    assert marker, (f"README.md line {line}: a ```{lang} block without a '<!-- readme-test: SETUP -->' marker "
                    f"(set-ups: {', '.join(SETUPS)}; or 'skip REASON')")
    if marker.startswith("skip"):
        assert marker[4:].strip(), f"README.md line {line}: say why the block is skipped"
        pytest.skip(marker)
    assert marker in SETUPS, f"README.md line {line}: unknown set-up {marker!r}; known: {', '.join(SETUPS)}"
    monkeypatch.chdir(tmp_path)
    namespace = {"attribx": attribx, **SETUPS[marker](tmp_path)}     # blocks read on from "import attribx"
    if lang == "python":
        exec(compile(code, f"README.md:{line}", "exec"), namespace)
        return
    commands = [ln.split("#")[0].strip() for ln in code.splitlines()]
    commands = [c for c in commands if c.startswith("attribx ")]
    assert commands, f"README.md line {line}: a bash block marked {marker!r} runs no attribx command"
    env = dict(os.environ, MPLBACKEND="Agg")
    for command in commands:
        args = shlex.split(command)
        done = subprocess.run([sys.executable, "-m", "attribx", *args[1:]], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, f"README.md line {line}: `{command}` failed:\n{done.stderr[-2000:]}"
