"""Constant folding of an ONNX graph that never makes it larger.

Exported transformer graphs (SwinUNETR's window partition, attention masks) carry thousands of nodes of shape
arithmetic computed from ``Shape`` of tensors whose shapes are static. Folding them makes a graph that tools
whose passes scan the whole graph per node (ModelOpt's AutoCast) handle quickly. A general folder (ONNX Runtime's
basic level) also turns *large* values computed from small ones into stored constants: SwinUNETR's shifted-window
attention masks (125 x 343 x 343 floats at 96^3) are built at run time from a few shape numbers, and stored they
made its TensorRT-RTX plan 105 -> 195 MB. So a node is folded here only where its value is small or no larger
than the constants it reads; the others stay in the graph, computed at run time as exported.

Each node is evaluated by ONNX's own reference implementation (``onnx.reference``) at the model's opset, so the
values are exactly what the operator's definition says; a node it cannot evaluate is kept.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

SMALL = 1 << 16  # elements: values up to this size are always folded (shape arithmetic, index tables)
# Never evaluated: random values, control flow (subgraphs), and what cannot be a constant.
_NOT_FOLDED = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
               "If", "Loop", "Scan", "SequenceConstruct", "Optional"}


def fold_constants(model, small: int = SMALL, max_passes: int = 8):
    """A copy of ``model`` (an ``onnx.ModelProto``) with every node whose inputs are constants replaced by its
    value, where that value has at most ``small`` elements or no more than the constant inputs it replaces.
    ``Shape``/``Size`` of tensors with static shapes are constants. Node names, the nodes left, inputs and
    outputs are unchanged; nodes no output depends on any more are removed. Passes repeat (at most
    ``max_passes``) while they remove nodes."""
    import onnx

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    for _ in range(max_passes):  # a folded Reshape shape lets shape inference find shapes it could not before
        before = len(folded.graph.node)
        _fold_once(folded, small)
        if len(folded.graph.node) == before:
            break
    return folded


def _fold_once(model, small: int) -> None:
    """One pass of ``fold_constants`` over ``model``, in place."""
    from onnx import numpy_helper

    graph = model.graph
    shapes = _static_shapes(model)
    inputs = {i.name for i in graph.input}  # an initializer that is also an input is a default, not a constant
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer if init.name not in inputs}
    stored = set(values)  # names whose value the folded graph holds as an initializer
    opset = {o.domain or "": o.version for o in model.opset_import}
    kept = []
    for node in graph.node:
        result = _evaluate(node, values, shapes, opset)
        if result is None:
            kept.append(node)
            continue
        values.update(zip(node.output, result))
        read = sum(values[name].size for name in node.input if name in stored)  # constants it would replace
        if all(v.size <= max(small, read) for v in result):
            stored.update(node.output)
        else:
            kept.append(node)  # a large value built from small ones: computed at run time, as exported
    used = _live(kept, [o.name for o in graph.output])
    kept = [node for node in kept if any(name in used for name in node.output)]
    needed = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    produced = {name for node in kept for name in node.output}
    same = _duplicates({name: values[name] for name in sorted(needed & stored - produced)},
                       keep={o.name for o in graph.output})
    for node in kept:
        for index, name in enumerate(node.input):
            if name in same:
                node.input[index] = same[name]
    initializers = [numpy_helper.from_array(np.asarray(values[name]), name)
                    for name in sorted(needed & stored - produced) if name not in same]
    initializers += [init for init in graph.initializer if init.name in inputs]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.value_info[:]  # shapes of removed tensors; re-inferred by whoever needs them


def _static_shapes(model) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, for every tensor whose shape shape inference determines fully."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001  an unusual graph: fold without Shape nodes
        log.info("no shape inference (%s): Shape nodes are not folded", str(exc).splitlines()[0][:200])
        inferred = model
    shapes = {}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[info.name] = tuple(d.dim_value for d in tensor.shape.dim)
    return shapes


def _evaluate(node, values: dict, shapes: dict, opset: dict) -> list[np.ndarray] | None:
    """The outputs of ``node`` where they are constants, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _NOT_FOLDED or not node.output:
        return None
    if node.op_type in ("Shape", "Size") and node.input[0] not in values:
        shape = shapes.get(node.input[0])
        if shape is None:
            return None
        if node.op_type == "Size":
            return [np.array(int(np.prod(shape)), dtype=np.int64)]
        attributes = {a.name: a.i for a in node.attribute}
        rank = len(shape)
        start, end = attributes.get("start", 0), attributes.get("end", rank)
        return [np.array(shape[slice(start, end)], dtype=np.int64)]
    if any(name and name not in values for name in node.input):
        return None
    try:
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        inputs = [name for name in node.input if name]
        graph = helper.make_graph(
            [node], "fold",
            [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(values[name].dtype), None)
             for name in dict.fromkeys(inputs)],
            [helper.make_tensor_value_info(name, 0, None) for name in node.output])
        single = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opset.items()])
        outputs = ReferenceEvaluator(single).run(None, {name: values[name] for name in dict.fromkeys(inputs)})
    except Exception as exc:  # noqa: BLE001  an operator the reference cannot run: keep the node
        log.debug("not folded: %s %s (%s)", node.op_type, node.name, exc)
        return None
    return [np.asarray(value) for value in outputs]


def _duplicates(arrays: dict[str, np.ndarray], keep: set[str]) -> dict[str, str]:
    """Name -> the first name with an identical array (dtype, shape, bytes): one copy is stored (several blocks
    that slice one shared index table each get the same value)."""
    import hashlib

    first, same = {}, {}
    for name, array in arrays.items():
        array = np.asarray(array)  # (not ascontiguousarray: it makes a 0-d array 1-d)
        digest = (array.dtype.str, array.shape, hashlib.sha256(array.tobytes()).hexdigest())
        if digest in first and name not in keep:
            same[name] = first[digest]
        else:
            first.setdefault(digest, name)
    return same


def _live(nodes, outputs: list[str]) -> set[str]:
    """Names of the tensors ``outputs`` depend on, through ``nodes``."""
    producer = {name: node for node in nodes for name in node.output}
    live, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        if name in producer:
            stack.extend(n for n in producer[name].input if n)
    return live
