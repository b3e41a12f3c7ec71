"""quant-harness: fp32 vs quantized simulation, layer by layer, with task metrics and gates."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("quant-harness")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
