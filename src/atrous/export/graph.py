"""Rewrites of exported ONNX graphs: run-time resize sizes folded into constants where the
shapes are static, dead nodes removed, and the inventory of operator types a graph uses.

A graph fixed to one image size still asks, at every resize, for its input's batch and channels
(``Shape`` → ``Concat`` with the constant height and width → ``Resize(sizes=…)``), because the
batch stays free. :func:`fold_resize_sizes` gives each such ``Resize`` constant ``scales``
instead (1 for batch and channels, output ÷ input for height and width), so the graph has no
``Shape`` left: ONNX Runtime plans it with static shapes, and TensorRT needs no shape tensors.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

#: The ``Resize`` input that holds its output sizes (inputs: X, roi, scales, sizes).
_SIZES = 3


def _static_shapes(proto: Any) -> dict[str, list[int | None]]:
    """Each value's shape as known from shape inference (None for a free dimension)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    graph = inferred.graph
    shapes = {}
    for info in (*graph.value_info, *graph.input, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def resize_scale(source: int, target: int) -> np.float32:
    """The float32 scale whose product with ``source`` rounds down to ``target`` (ONNX
    ``Resize``: output = floor(input × scale)), in float32 and in float64 arithmetic alike
    (runtimes use either): target ÷ source, or the next float32 above it when rounding would
    lose a pixel."""
    scale = np.float32(target / source)
    while min(np.float32(source) * scale, source * np.float64(scale)) < target:
        scale = np.nextafter(scale, np.float32(np.inf))
    return scale


def fold_resize_sizes(proto: Any) -> int:
    """Give every ``Resize`` whose ``sizes`` are computed at run time, and whose input and
    output height and width are static, constant ``scales`` instead; remove the nodes that
    computed the sizes. Changes ``proto`` in place; returns how many were folded."""
    from onnx import numpy_helper

    shapes = _static_shapes(proto)
    constants = {tensor.name for tensor in proto.graph.initializer}
    folded = 0
    for node in proto.graph.node:
        if node.op_type != "Resize" or len(node.input) <= _SIZES or node.input[_SIZES] == "":
            continue
        if node.input[_SIZES] in constants or any(a.name == "axes" for a in node.attribute):
            continue
        source, target = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not source or not target or None in source[1:] or None in target[1:]:
            continue
        pairs = zip(source[2:], target[2:], strict=True)
        scales = [1.0, 1.0, *(resize_scale(s, t) for s, t in pairs)]
        name = f"{node.output[0]}_scales"
        proto.graph.initializer.append(numpy_helper.from_array(np.float32(scales), name))
        constants.add(name)
        node.input[:] = [node.input[0], node.input[1], name]
        folded += 1
    remove_dead_nodes(proto)
    return folded


def remove_dead_nodes(proto: Any) -> None:
    """Drop nodes none of whose outputs reach a graph output, then unused initializers."""
    graph = proto.graph
    while True:
        used = {name for node in graph.node for name in node.input}
        used |= {output.name for output in graph.output}
        dead = [node for node in graph.node if not any(o in used for o in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    for info in [v for v in graph.value_info if v.name not in used]:
        graph.value_info.remove(info)


def op_types(proto: Any) -> Counter[str]:
    """How many nodes of each operator type the graph has (``domain::Op`` outside ONNX's own)."""
    return Counter(
        f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        for node in proto.graph.node
    )


def copy_metadata(source: str | Path, target: str | Path) -> None:
    """Give the ONNX file ``target`` the metadata entries of ``source`` it lacks (a rewrite such
    as quantisation may drop the model description)."""
    import onnx

    source_proto, target_proto = onnx.load(str(source)), onnx.load(str(target))
    present = {entry.key for entry in target_proto.metadata_props}
    missing = [entry for entry in source_proto.metadata_props if entry.key not in present]
    if missing:
        target_proto.metadata_props.extend(missing)
        onnx.save(target_proto, str(target))
