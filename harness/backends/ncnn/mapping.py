"""ncnn names -> ONNX names: which ncnn layer is which ONNX node, which blob holds which tensor.

pnnx renames everything (blobs ``in0``, ``1``, ``2``..., layers ``convclip_3``) and fuses
(Conv+Clip into one Convolution with ``9=3``, Flatten away), so names cannot be carried over.
Two facts identify them instead:

* **Layers by weights.** pnnx copies the weights of a BN-folded model unchanged, so an ncnn
  Convolution/ConvolutionDepthWise/InnerProduct is the ONNX Conv/Gemm/MatMul whose initializer
  holds the same numbers (Gemm/MatMul weights transposed to ncnn's ``[out, in]`` where needed).
* **Blobs by values.** The fp32 ncnn model and onnxruntime agree to about 1e-5 on every tensor
  they share, so one forward pass on a fixed random input names each blob: an ONNX tensor maps
  to the ncnn blob of the same size whose values equal it to ``rtol`` of its largest magnitude.
  Tensors that pnnx fused away (a Conv output read only by its Clip) or lays out differently stay
  unmapped and are listed. Several ONNX tensors may map to one blob (Flatten's output equals its
  input).

A user's own ncnn model (caffe2ncnn, onnx2ncnn keep the source's blob names) maps by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from harness.backends.ncnn.param import INT8_LAYER_TYPES, NcnnGraph
from harness.model.graph import node_display_name, topological_nodes

#: Relative tolerance (of a tensor's largest magnitude) for calling an ncnn blob and an ONNX tensor
#: the same; measured fp32 disagreement is about 1e-6 of that magnitude on MobileNetV2 and UltraFace.
MATCH_RTOL = 1e-3
_FLAG_FP32 = 0


def ncnn_weights(graph: NcnnGraph, data: bytes, spans: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    """ncnn layer name -> its fp32 weights (flattened), for int8-capable layers stored as raw fp32."""
    out = {}
    for layer, (start, end) in zip(graph.layers, spans):
        if layer.type not in INT8_LAYER_TYPES or end - start < 4:
            continue
        count = layer.get_int(2 if layer.type == "InnerProduct" else 6)
        flag = int.from_bytes(data[start:start + 4], "little")
        if flag == _FLAG_FP32 and end - start >= 4 + 4 * count:
            out[layer.name] = np.frombuffer(data, "<f4", count=count, offset=start + 4)
    return out


def onnx_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """ONNX node display name -> its weight in ncnn's layout (``[out, ...]`` flattened)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in topological_nodes(model.graph):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        if (node.op_type == "Gemm" and not trans_b) or node.op_type == "MatMul":
            w = w.T if w.ndim == 2 else w
        out[node_display_name(node)] = np.ascontiguousarray(w).reshape(-1)
    return out


def match_layers(graph: NcnnGraph, data: bytes, spans: Sequence[tuple[int, int]],
                 model: onnx.ModelProto) -> dict[str, str]:
    """ncnn layer name -> ONNX node display name, for int8-capable layers whose weights match."""
    theirs = ncnn_weights(graph, data, spans)
    ours = onnx_weights(model)
    by_size: dict[int, list[str]] = {}
    for name, w in ours.items():
        by_size.setdefault(w.size, []).append(name)
    out: dict[str, str] = {}
    taken: set[str] = set()
    for layer, w in theirs.items():
        scale = float(np.abs(w).max()) or 1.0
        for candidate in by_size.get(w.size, []):
            if candidate not in taken and float(np.abs(ours[candidate] - w).max()) <= 1e-6 * scale:
                out[layer] = candidate
                taken.add(candidate)
                break
    return out


def match_blobs(ncnn_values: Mapping[str, np.ndarray], onnx_values: Mapping[str, np.ndarray], *,
                rtol: float = MATCH_RTOL) -> dict[str, str]:
    """ONNX tensor -> ncnn blob with equal values (see the module docstring); ``onnx_values`` in
    topological order, ``ncnn_values`` in ncnn's blob order (the first equal blob wins a tie)."""
    by_size: dict[int, list[tuple[str, np.ndarray]]] = {}
    for blob, value in ncnn_values.items():
        by_size.setdefault(value.size, []).append((blob, value.reshape(-1)))
    out = {}
    for tensor, value in onnx_values.items():
        ref = np.asarray(value, np.float32).reshape(-1)
        if ref.size == 0 or not np.all(np.isfinite(ref)):
            continue
        tol = rtol * max(float(np.abs(ref).max()), 1e-12)
        probe = np.linspace(0, ref.size - 1, num=min(ref.size, 64)).astype(np.int64)
        best, best_err = None, np.inf
        for blob, cand in by_size.get(ref.size, []):
            if float(np.abs(cand[probe] - ref[probe]).max()) > tol:
                continue  # cheap rejection on a few elements before the full comparison
            err = float(np.abs(cand - ref).max())
            if err <= tol and err < best_err:
                best, best_err = blob, err
        if best is not None:
            out[tensor] = best
    return out


def match_names(graph: NcnnGraph, tensors: Sequence[str]) -> dict[str, str]:
    """ONNX tensor -> the ncnn blob of the same name (models converted by caffe2ncnn/onnx2ncnn)."""
    blobs = set(graph.blob_names)
    return {t: t for t in tensors if t in blobs}
