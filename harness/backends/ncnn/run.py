"""Run an ncnn model with the ncnn Python runtime and read every blob back in real units.

Facts this module relies on (ncnn ``src/net.cpp``, the pybind11 binding, and measured):

* ``opt.use_int8_inference`` must be on for a model with ``int8_scale_term`` layers: ncnn then
  quantises their fp32 weights at load time and runs int8 kernels; with it off such a model
  crashes the process (segfault), so :class:`NcnnRunner` refuses that combination.
* fp16/bf16 storage and arithmetic are switched off: ncnn turns fp16 storage on by default on
  CPUs that have it, which would add fp16 rounding the harness does not model.
* ``Extractor.set_light_mode(False)`` keeps every intermediate blob; in light mode a blob already
  consumed is recycled and its extraction fails (-100).
* Between two layers with fused requantisation ncnn keeps int8 codes; ``extract`` converts them
  to floats *as codes*, so they are divided by their scale here (``code_blobs``).
* Binding traps: ``ncnn.Mat(ndarray)`` reads the array's memory without looking at its strides
  (pass a C-contiguous array), and does not copy it (keep the array alive while the Mat is used;
  ``ncnn.Mat(np.ascontiguousarray(x)).clone()`` in one expression clones freed memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.backends.base import BackendError
from harness.backends.ncnn.param import NcnnGraph, read_param
from harness.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class NcnnOptions:
    """The ``ncnn.Option`` fields the harness sets; the rest keep ncnn's defaults.

    ``winograd``/``sgemm``/``packing`` are ncnn's defaults (on) and change which kernels run: the
    int8 Winograd F(4,3) kernel for 3x3 stride-1 convolutions, for one, truncates its output.
    """

    threads: int = 1
    use_int8_inference: bool = True
    winograd: bool = True
    sgemm: bool = True
    packing: bool = True


def ncnn_available() -> str | None:
    try:
        import ncnn  # noqa: F401
    except ImportError as exc:
        return f"the ncnn wheel is not installed ({exc})"
    return None


class NcnnRunner:
    """One loaded ncnn model. ``code_blobs``: blob -> scale of the int8 codes ncnn keeps there."""

    def __init__(self, param: Path, binary: Path, *, options: NcnnOptions = NcnnOptions(),
                 code_blobs: Mapping[str, float] | None = None, graph: NcnnGraph | None = None) -> None:
        import ncnn

        self.graph = graph if graph is not None else read_param(param)
        if self.graph.is_int8 and not options.use_int8_inference:
            raise ConfigError(f"Got the int8 ncnn model {param} with use_int8_inference = false",
                              expected="use_int8_inference = true for a model with int8_scale_term (8=) layers "
                              "(ncnn crashes the process otherwise)",
                              remedy="leave use_int8_inference on, or run the fp32 .param without 8= keys")
        self.options = options
        self.code_blobs = dict(code_blobs or {})
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_vulkan_compute = False
        opt.num_threads = options.threads
        opt.use_int8_inference = options.use_int8_inference
        for name in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                     "use_bf16_packed"):
            setattr(opt, name, False)
        opt.use_winograd_convolution = options.winograd
        opt.use_sgemm_convolution = options.sgemm
        opt.use_packing_layout = options.packing
        if self.net.load_param(str(param)) != 0:
            raise BackendError(f"ncnn could not read {param}", expected="an ncnn .param this ncnn version knows",
                               remedy="regenerate it with the installed pnnx, or update the ncnn wheel")
        if self.net.load_model(str(binary)) != 0:
            raise BackendError(f"ncnn could not load {binary} with {param}",
                               expected="the .bin written together with that .param",
                               remedy="pass the matching .bin (same model, same export)")
        self.blobs = self.graph.blob_names

    @property
    def input_blobs(self) -> list[str]:
        return self.graph.input_blobs

    def run(self, feeds: Mapping[str, np.ndarray], *, blobs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Every blob (or ``blobs``) for one input of batch 1: blob name -> float32 array, ncnn's shape
        (``c, h, w`` without the batch axis); int8 codes are dequantised."""
        import ncnn

        wanted = list(self.blobs if blobs is None else blobs)
        keep = []  # the arrays the input Mats point into must outlive the extraction
        with self.net.create_extractor() as ex:
            ex.set_light_mode(False)
            for name, value in feeds.items():
                arr = np.ascontiguousarray(_drop_batch(name, value), dtype=np.float32)
                keep.append(arr)
                if ex.input(name, ncnn.Mat(arr)) != 0:
                    raise BackendError(f"ncnn has no input blob {name!r}", expected=f"one of {self.input_blobs}",
                                       remedy="name the model's Input blobs")
            out = {}
            for name in wanted:
                ret, mat = ex.extract(name)
                if ret != 0:
                    raise BackendError(f"ncnn could not compute blob {name!r} (error {ret})",
                                       expected="every blob of the model computable from the inputs",
                                       remedy="check the model with ncnn's own tools")
                value = np.array(mat, dtype=np.float32)
                if name in self.code_blobs:
                    value = value / np.float32(self.code_blobs[name])
                out[name] = value
        del keep
        return out


def _drop_batch(name: str, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim >= 2 and value.shape[0] == 1:
        return value[0]
    if value.ndim >= 4:
        raise BackendError(f"Got input {name!r} with batch {value.shape[0]}", expected="a batch of 1",
                           remedy="run ncnn one image at a time")
    return value
