"""LRP relevance that sums to orders of magnitude more than the explained score is said, with the node where
it grows (issue 17 point 7)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx.errors import AttribxWarning, ConservationWarning


def bn_net(mean: float):
    """conv -> batch norm (tiny running variance, mean ``mean``) -> relu -> conv -> linear. With the mean just
    below the conv's outputs, the batch norm's shift is a large negative bias and LRP-epsilon explodes."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("bn")
    x = b.input("x", (2, 8, 8))
    h = b.conv(x, np.full((4, 2, 1, 1), 0.5, "f4"), None, name="conv1")
    h = b.batch_norm(h, mean=np.full(4, mean, "f4"), var=np.full(4, 1e-4, "f4"), scale=np.ones(4, "f4"),
                     bias=np.zeros(4, "f4"), name="bn")
    h = b.relu(h)
    h = b.conv(h, np.abs(rng.normal(size=(3, 4, 3, 3))).astype("f4"), None, padding=1, name="conv2")
    h = b.flatten(h)
    return b.build(b.linear(h, np.abs(rng.normal(size=(5, 192))).astype("f4"), name="fc"))


def inputs():
    return (1 + 0.01 * np.random.default_rng(1).random(size=(3, 2, 8, 8))).astype("f4")


def test_exploding_relevance_warns_and_names_the_node():
    x = inputs()
    with pytest.warns(ConservationWarning, match=r"grows at node 'conv1'") as caught:
        r = attribx.explain(bn_net(1.0), x, "lrp.epsilon")
    assert issubclass(ConservationWarning, AttribxWarning)
    msg = str(caught[0].message)
    assert "lrp.epsilon" in msg and "\n" not in msg
    score = attribx.forward(bn_net(1.0), x)[np.arange(3), r.target.values]
    assert np.all(np.abs(r.sum(("channel", "height", "width")).values) > 100 * np.abs(score))   # it does explode


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.z_plus", "gradient", "gradient_x_input"])
def test_conserving_network_does_not_warn(method):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConservationWarning)
        r = attribx.explain(bn_net(0.0), inputs(), method)
    assert np.isfinite(r.values).all()


def test_gradient_methods_are_not_checked():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConservationWarning)
        attribx.explain(bn_net(1.0), inputs(), "gradient_x_input")


def test_engine_without_reductions():
    """The check sums on the host when an engine has no ``sum`` (the base class raises NotImplementedError)."""
    from attribx.engines.base import Engine
    from attribx.engines.numpy_engine import NumpyEngine
    from attribx.propagation import sample_sums

    class NoSum(NumpyEngine):
        def sum(self, x, axis=None, keepdims=False):
            return Engine.sum(self, x, axis, keepdims)

    r = np.arange(24, dtype="f4").reshape(2, 3, 4)
    np.testing.assert_array_equal(sample_sums(NoSum(), r), r.reshape(2, -1).sum(1))


def test_cli_warns_in_one_line(tmp_path):
    import os
    import subprocess
    import sys
    path, xs = tmp_path / "bn.npz", tmp_path / "x.npy"
    bn_net(1.0).save(path)
    np.save(xs, inputs())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "attribx.cli", "explain", str(path), str(xs), "-o",
                          str(tmp_path / "r.h5")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attribx: warning: method 'lrp.epsilon'"), out.stderr
    assert "grows at node 'conv1'" in lines[0]


def test_growth_at_a_softmax_points_to_the_attention_methods():
    """alpha-beta grows at the attention softmax of the shared attention block (a node of op softmax): the
    warning names it and points to lrp.attn / lrp.cp, not to batch norms."""
    from engine_cases import attention_graph
    graph, x = attention_graph()
    with pytest.warns(ConservationWarning, match=r"node 'att' \(softmax\).*lrp\.attn or lrp\.cp") as caught:
        attribx.explain(graph, x, "lrp.alpha_beta", engine="numpy")
    assert all("batch norm" not in str(w.message) for w in caught)


def test_nan_relevance_names_the_node_where_it_first_appears(monkeypatch):
    """A rule that turns finite relevance into NaN (0/0, an overflow in float32) is named as such, with the
    advice that fits (not the batch-norm hint of growing relevance)."""
    from attribx.rules.lrp import Epsilon
    plain, carried = Epsilon.relevance, Epsilon.carry

    def poisoned(self, op, eng, R):
        rels = plain(self, op, eng, R)
        return [r * np.nan for r in rels] if op.ctx.node.name == "conv2" else rels

    def poisoned_carry(self, ctx, s, r, want):      # the same rule in quotient form (the pass's first choice)
        back = carried(self, ctx, s, r, want)
        return [None if b is None else b * np.nan for b in back] if ctx.node.name == "conv2" else back
    monkeypatch.setattr(Epsilon, "relevance", poisoned)
    monkeypatch.setattr(Epsilon, "carry", poisoned_carry)
    with pytest.warns(ConservationWarning, match=r"first turns non-finite at node 'conv2' \(conv\)") as caught:
        attribx.explain(bn_net(0.0), inputs(), "lrp.epsilon")
    msg = str(caught[0].message)
    assert "positive epsilon" in msg and "batch norm" not in msg


def test_growth_at_a_softmax_under_attn_lrp_does_not_point_to_itself():
    """Under lrp.attn itself the softmax hint explains AttnLRP's softmax rule and points to lrp.cp (it used to
    advise using lrp.attn to someone using lrp.attn)."""
    from attribx.methods import _growth_hint
    hint = _growth_hint("softmax", "lrp.attn")
    assert "lrp.cp" in hint and "made for attention" not in hint
    assert "made for attention" in _growth_hint("softmax", "lrp.alpha_beta")
