"""Load and normalise ONNX models; run them with every intermediate tensor exposed ("taps")."""

from harness.model.graph import TensorInfo, node_display_name, tensor_list, topological_nodes
from harness.model.load import MIN_OPSET, Model, load_model, normalise_model
from harness.model.runner import TapBatch, TapRunner
from harness.model.session import default_threads, make_session

__all__ = [
    "MIN_OPSET",
    "Model",
    "TapBatch",
    "TapRunner",
    "TensorInfo",
    "default_threads",
    "load_model",
    "make_session",
    "node_display_name",
    "normalise_model",
    "tensor_list",
    "topological_nodes",
]
