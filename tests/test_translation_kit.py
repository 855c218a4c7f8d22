"""The translation kit: converter tables (lookup, plugin layering, conflicts) and axis order bookkeeping."""
import numpy as np
import pytest

from attribx.errors import PluginError, UnsupportedError
from attribx.graph import Value
from attribx.translation import Converter, ConverterTable, Tensor, Translator, converter, converters_of
import attribx


class Base:
    pass


class Child(Base):
    pass


def test_table_looks_up_classes_along_their_mro():
    table = ConverterTable("torch")

    @table.register(Base, "method:view")
    def base_conv(ctx, x):
        return x

    assert table.lookup(Child).convert is base_conv
    assert table.lookup("method:view").convert is base_conv
    assert table.lookup(int) is None
    assert table.lookup([1]) is None          # unhashable: no converter, no crash
    assert Child in table and "method:x" not in table


def test_classes_and_functions_are_found_by_dotted_path():
    """A plugin names its layer by path, so registering does not import the framework it is written in."""
    table = ConverterTable("torch")
    table.register(f"{__name__}.Base", f"{__name__}.helper")(lambda ctx, x: x)
    assert table.lookup(Child) is table.lookup(Base) is not None
    assert table.lookup(helper) is not None
    assert table.lookup(Converter) is None


def helper(x):
    return x


def test_plugin_converters_replace_builtins_in_a_copy_only():
    table = ConverterTable("keras")

    @table.register("Dense")
    def builtin(ctx, layer, xs):
        return "builtin"

    @converter("keras", "Dense", "MyLayer")
    def mine(ctx, layer, xs):
        return "mine"

    @converter("onnx", "MyOp")
    def other(ctx, node):
        return "onnx"

    records = converters_of([mine, [other]])
    assert [c.target for c in records] == ["Dense", "MyLayer", "MyOp"]
    layered = table.with_plugins(records)
    assert layered.lookup("Dense").convert is mine and layered.lookup("MyLayer").convert is mine
    assert "MyOp" not in layered                     # another framework's converter stays out
    assert table.lookup("Dense").convert is builtin  # the built-in table is unchanged
    assert "mine" in layered.lookup("Dense").origin


def test_conflicts_and_bad_records_are_refused():
    table = ConverterTable("torch")
    table.register(Base)(lambda ctx, x: x)
    with pytest.raises(PluginError, match="two torch converters"):
        table.register(Base)(lambda ctx, x: x)
    a = Converter("torch", Child, lambda ctx, x: 1, "plugin_a.conv")
    b = Converter("torch", Child, lambda ctx, x: 2, "plugin_b.conv")
    with pytest.raises(PluginError, match="plugin_a.conv and plugin_b.conv"):
        table.with_plugins([a, b])
    with pytest.raises(PluginError, match="framework 'jax'"):
        Converter("jax", Child, lambda: 0)
    with pytest.raises(PluginError, match="attribx_converters"):
        converters_of([object()])
    with pytest.raises(PluginError, match="at least one target"):
        converter("torch")


@pytest.mark.parametrize("order,target", [((0, 2, 3, 1), None), (None, (0, 3, 1, 2)), ((0, 2, 3, 1), (0, 3, 1, 2)),
                                          ((1, 0, 2, 3), (1, 0, 3, 2))])
def test_reorder_emits_the_transpose_that_moves_framework_axes(order, target):
    """A value the framework sees as (N, C, H, W); the graph stores it in ``order``; after reorder the graph
    holds it in ``target`` order: checked by running the emitted transpose on data."""
    rng = np.random.default_rng(0)
    framework = rng.normal(size=(1, 2, 3, 4))
    stored_order = order or (0, 1, 2, 3)
    stored_shape = [0] * 4
    for i, o in enumerate(stored_order):
        stored_shape[o] = framework.shape[i]
    inv = np.argsort(stored_order)
    stored = np.transpose(framework, inv)
    assert stored.shape == tuple(stored_shape)
    ctx = Translator()
    ctx.main, ctx.origin = "layer", "Test"
    t = Tensor("input", tuple(stored_shape), order)
    assert t.framework_shape == framework.shape
    out = ctx.reorder(t, target)
    if not ctx.nodes:
        assert tuple(stored_order) == tuple(target or range(4))
        return
    graph = ctx.finish([Value("input", (None, *stored_shape[1:]), "float64")], [out.name])
    got = np.asarray(attribx.forward(graph, stored, engine="numpy"))
    want = np.transpose(framework, np.argsort(target or (0, 1, 2, 3)))
    np.testing.assert_array_equal(got, want)
    assert out.framework_shape == framework.shape
    for axis in range(4):
        assert got.shape[out.graph_axis(axis)] == framework.shape[axis]


def test_errors_name_the_layer_and_the_way_to_add_a_converter():
    ctx = Translator()
    ctx.framework = "torch"
    ctx.main, ctx.origin = "blocks.0.attn", "MyAttention"
    err = ctx.no_translation("torch module mypkg.MyAttention")
    assert isinstance(err, UnsupportedError)
    assert "'blocks.0.attn' (MyAttention)" in str(err) and "attribx_converters" in str(err)
    assert "docs/plugins.md" in str(err)
    with pytest.raises(UnsupportedError, match="'blocks.0.attn' .* would move the batch axis"):
        ctx.reorder(Tensor("x", (1, 2, 3), (1, 0, 2)))       # time-major: batch is framework axis 1
    with pytest.raises(UnsupportedError, match="out of range"):
        Tensor("x", (1, 2)).graph_axis(2)


def test_names_constants_and_aliases():
    ctx = Translator(dtype=np.float64)
    ctx.main = ctx.unique("fc")          # a walker reserves the layer's name
    c = ctx.constant([1.0, 2.0])
    assert c.name == "fc:const" and c.shape == (2,)
    assert ctx.add_node("relu", "input") == "fc_1" and ctx.emit("relu", ["fc_1"], (1, 2), name="out").name == "out"
    ctx.alias("fc.act", "out")
    g = ctx.finish([Value("input", (None, 2), "float64")], ["out"])
    assert g.meta["aliases"] == {"fc.act": "out"}
    assert g.nodes[0].params["value"].dtype == np.float64
