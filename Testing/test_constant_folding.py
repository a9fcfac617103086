"""Constant folding before ModelOpt (``backends/constant_folding``): shape arithmetic goes, large values built at
run time stay computed, node names stay. Outputs are compared by OpenVINO running both graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from engine_builder.backends import modelopt_qdq
from engine_builder.backends.constant_folding import SMALL, fold_constants


class WindowAttention(torch.nn.Module):
    """Shape arithmetic from ``x.shape`` (as Swin's window partition has) and an attention mask built from those
    shapes at run time, larger than ``SMALL`` (as Swin's shifted-window masks are)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.mix = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = self.conv(x)
        n, c, d, h, w = y.shape
        windows = y.reshape(n, c, d // 2, 2, h // 2, 2, w // 2, 2).permute(0, 2, 4, 6, 1, 3, 5, 7)
        mixed = self.mix(windows.reshape(n, d * h * w // 8, c, 8)).reshape(n, d // 2, h // 2, w // 2, c, 2, 2, 2)
        y = mixed.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(n, c, d, h, w)
        flat = y.reshape(n * c, d * h * w)
        region = torch.zeros(d * h * w)  # as Swin's compute_mask: small region ids, their (512, 512) outer difference
        region[: d * h * w // 2] = 1.0
        mask = region.reshape(1, -1) - region.reshape(-1, 1)
        mask = mask.masked_fill(mask != 0, -100.0)
        attention = (flat.transpose(0, 1) @ flat + mask).softmax(-1)
        return (attention @ flat.transpose(0, 1)).transpose(0, 1).reshape(n, c, d, h, w)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("folding")
    torch.manual_seed(0)
    path = folder / "attention.onnx"
    with torch.no_grad():
        torch.onnx.export(WindowAttention().eval(), torch.zeros(1, 1, 8, 8, 8), str(path), input_names=["image"],
                          dynamo=False, opset_version=17, do_constant_folding=False)
    return path


def _constant_elements(graph) -> list[int]:
    sizes = [int(np.prod(init.dims)) for init in graph.initializer]
    sizes += [int(np.prod(a.t.dims)) for node in graph.node if node.op_type == "Constant" for a in node.attribute
              if a.name == "value"]
    return sizes


def _run(path, x):
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU")(x)[0]


def test_folding_removes_shape_arithmetic_and_keeps_large_run_time_values(exported, tmp_path):
    original = onnx.load(str(exported))
    folded_path = modelopt_qdq.folded_for_modelopt(exported, tmp_path)
    assert folded_path != exported
    folded = onnx.load(str(folded_path))
    onnx.checker.check_model(folded, full_check=True)
    before, after = original.graph.node, folded.graph.node
    assert len(after) < len(before) / 2, (len(before), len(after))
    assert not any(node.op_type in ("Shape", "Gather", "Constant") for node in after), [n.op_type for n in after]
    # The 512 x 512 mask is computed at run time as exported, not stored: no stored value is larger than SMALL,
    # and the graph holds no more constant elements than before.
    assert max(_constant_elements(folded.graph)) <= SMALL
    assert sum(_constant_elements(folded.graph)) <= sum(_constant_elements(original.graph))
    assert {"Sub", "Where"} <= {node.op_type for node in after}  # the mask's own arithmetic is still there
    # Node names are kept (``--keep-float`` names stay valid).
    assert {node.name for node in after} <= {node.name for node in before}
    x = np.random.default_rng(0).random((1, 1, 8, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(folded_path, x), _run(exported, x), rtol=0, atol=1e-6)


def test_a_larger_limit_stores_the_mask(exported):
    """The limit is what keeps the mask out: with a limit above its size the same graph stores it (and loses its
    arithmetic), which is what a general folder does (SwinUNETR's TensorRT-RTX plan: 105 -> 195 MB)."""
    folded = fold_constants(onnx.load(str(exported)), small=1 << 20)
    assert max(_constant_elements(folded.graph)) >= 512 * 512
    assert "Where" not in {node.op_type for node in folded.graph.node}


def test_shared_constants_are_stored_once():
    """Two blocks slicing one shared table each fold to the same value: one copy is stored."""
    from onnx import helper, numpy_helper

    table = numpy_helper.from_array(np.arange(40000, dtype=np.int64).reshape(200, 200), "table")
    starts, ends = (numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in (("s", [0]), ("e", [150])))
    nodes = [helper.make_node("Slice", ["table", "s", "e"], [f"sliced{i}"], name=f"slice{i}") for i in (0, 1)]
    nodes += [helper.make_node("Cast", [f"sliced{i}"], [f"cast{i}"], to=onnx.TensorProto.FLOAT, name=f"cast{i}")
              for i in (0, 1)]
    nodes += [helper.make_node("Add", ["x", "cast0"], ["a"], name="add0"),
              helper.make_node("Add", ["a", "cast1"], ["y"], name="add1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [150, 200])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [150, 200])],
                              [table, starts, ends])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    original = model.SerializeToString()
    folded = fold_constants(model)
    assert model.SerializeToString() == original  # the caller's model is left as it was
    assert [node.name for node in folded.graph.node] == ["add0", "add1"]
    assert len(folded.graph.initializer) == 1 and list(folded.graph.initializer[0].dims) == [150, 200]
    assert folded.graph.node[0].input[1] == folded.graph.node[1].input[1]
    # An initializer that is also a graph input is a default the caller may replace: nothing computed from it folds.
    graph.input.append(helper.make_tensor_value_info("table", onnx.TensorProto.INT64, [200, 200]))
    folded = fold_constants(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert len(folded.graph.node) == 6 and "table" in {init.name for init in folded.graph.initializer}
