"""What to do about a divergent layer, in the words of the suite's target toolchain.

Keeping one layer in higher precision is the standard fix for a layer that quantises badly, and each
toolchain spells it differently: ncnn keeps a layer fp32 when its lines are missing from the int8 table,
nnie_mapper computes a layer in 16 bits when its top blob name ends in ``_hp``, tpu-mlir reads a qtable
row ``<layer> F32``, onnxruntime's ``quantize_static`` takes ``nodes_to_exclude``. The suite-level
equivalent is always ``[quant] float_layers`` (or ``high_precision_layers`` for NNIE) so the harness can
confirm the fix before anyone touches the board.

The suite keys it writes are pasted verbatim by users, so they must be valid TOML whatever the layer is
called (``/backbone/Conv_403``, names with quotes) and must name what the harness resolves: a node name
(``[quant]`` layer keys also take tensor names, see :mod:`harness.model.names`). tpu-mlir names an op
after its first output tensor, so its qtable row uses the tensor name.
"""

from __future__ import annotations

import json

from typing import Any

from harness.compare.attribution import Divergence
from harness.quant.profiles import Profile


def toml_list(*names: str) -> str:
    """``["a", "b"]`` as TOML: a JSON string is a valid TOML basic string (same escapes)."""
    return "[" + ", ".join(json.dumps(n, ensure_ascii=False) for n in names) + "]"


def layer_remedy(profile: Profile, node_name: str, tensor: str) -> str:
    """One sentence: the toolchain's own way to keep ``node_name`` out of int8, and the suite key."""
    suite_key = f"[quant] float_layers = {toml_list(node_name)}"
    name = profile.name
    if profile.table_format == "ncnn":
        tool = (f"ncnn: comment out its lines in the int8 table (`#{node_name}_param_0 ...` and `#{node_name} ...`) "
                f"so ncnn2int8 keeps {node_name} fp32")
    elif name.startswith("nnie"):
        tool = (f"NNIE: rename the top of {node_name} to `{tensor}_hp` in the prototxt so nnie_mapper computes it "
                f"in 16 bits; suite: [quant] high_precision_layers = {toml_list(node_name)}")
        if profile.high_precision_scheme is None:
            tool = f"NNIE: the layer is already 16-bit in {name}; keep {node_name} in float on the CPU"
    elif profile.table_format == "tpu-mlir":
        tool = f"tpu-mlir: add the qtable row `{tensor} F32` (model_deploy --quantize_table)"
    elif name == "ort-qdq":
        tool = f"onnxruntime: quantize_static(..., nodes_to_exclude=[\"{node_name}\"])"
    else:
        tool = f"{name}: keep {node_name} in float (TFLite: leave the op unquantized with the float fallback)"
    return f"{tool}; to confirm here first: {suite_key}"


def divergence_remedy(profile: Profile, div: Divergence) -> str:
    """The remedy for the first divergent layer: keep the layer that caused it in higher precision, or, for a
    drift, say that no single layer will fix it."""
    if div.reason == "nonfinite":
        return (f"NaN/Inf first appear at {div.cause}; the finite check says whether fp32 already makes them "
                "(then fix the model or its input), else the quantised arithmetic overflows there")
    if div.cause_node is None:
        return (f"the error accumulates over many layers (from {div.drift_start!r} to {div.name!r}), so keeping one "
                "layer in float will not fix it: try another calibration method ([quant] activation_method), "
                "per-channel weights, or higher-precision activations; or relax the bound in [gates.layer_overrides] "
                "if the loss is accepted")
    return layer_remedy(profile, div.cause_node, div.cause_output or div.name)


def divergence_record(div: Divergence, remedy: str) -> dict[str, Any]:
    """The ``first_divergent`` object of results.json (docs/results.md)."""
    return {"name": div.name, "node_name": div.node_name, "op_type": div.op_type, "index": div.index,
            "metric": div.metric, "observed": div.observed, "bound": div.bound, "bound_source": div.bound_source,
            "inherited": div.inherited, "inherited_from": div.inherited_from, "reason": div.reason,
            "cause": {"node": div.cause_node, "op_type": div.cause_op_type, "tensor": div.cause_tensor,
                      "output": div.cause_output, "local": div.cause_local, "folded_batchnorm": div.folded_from},
            "drift_start": div.drift_start, "largest_step": div.largest_step,
            "acc_cosine": div.accumulated.cosine, "local_cosine": div.local.cosine if div.local else None,
            "description": div.describe(), "remedy": remedy}
