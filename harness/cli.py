"""``quant-harness`` command line: a thin dispatcher over ``harness.commands.*``.

Each sub-command lives in its own module with ``register(subparsers)`` (which sets ``func``) so
commands can be added without touching each other. User errors (``HarnessError``) are printed as
one readable message and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from harness import __version__
from harness.errors import HarnessError

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "harness.commands.run",
    "harness.commands.calibrate",
    "harness.commands.compare",
    "harness.commands.metrics",
    "harness.commands.golden",
    "harness.commands.report",
)

EXIT_USER_ERROR = 2

EXAMPLES = """examples:
  quant-harness run                                   every suites/*.toml -> reports/index.html
  quant-harness run suites/detector_ncnn_int8.toml --golden-update
  quant-harness calibrate model.onnx --images calib/ --profile ncnn-int8 --out model.table
  quant-harness compare golden/a golden/b             layer table; exit 1 when a gate fails
  quant-harness metrics voc --annotations VOCdevkit/VOC2007 --results dets/
  quant-harness report reports/results.json           re-render the HTML report
  quant-harness golden import --model m.onnx input_ref_data.dat output_ref_data.dat --out golden/m
  quant-harness golden verify golden/detector_ncnn_int8
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quant-harness",
        description="Test int8 quantization of vision models: fp32 vs quantized, layer by layer, with task metrics.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a real import error inside an existing command
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except HarnessError as exc:
        print(f"quant-harness: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
