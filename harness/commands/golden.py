"""``quant-harness golden import|verify``: bring Sophon dumps under a manifest, and check goldens.

``import`` exists because teams already have bmrt_test ``cmp`` files (``input_ref_data.dat``,
``output_ref_data.dat``) but no record of what is inside them; shapes and dtypes come from the
model, sizes are checked exactly, and the result is an ordinary checksummed golden.
``verify`` re-reads a golden and checks every file size and tensor checksum (exit 0 when intact;
a corrupt or missing golden is a user error, exit 2, raised as ``GoldenError``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.golden import GoldenStore, import_dumps


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("golden", help="import Sophon .dat dumps as a golden, or verify a golden",
                                   description=__doc__.splitlines()[0])
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="golden_action", metavar="ACTION")

    imp = actions.add_parser("import", help="write a manifest for input_ref_data.dat / output_ref_data.dat")
    imp.add_argument("--model", required=True, type=Path, help="the ONNX model the dumps belong to")
    imp.add_argument("input_dat", type=Path, help="input_ref_data.dat")
    imp.add_argument("output_dat", type=Path, help="output_ref_data.dat")
    imp.add_argument("--out", type=Path, default=None, help="golden directory (default: golden/<model stem>)")
    imp.add_argument("--batch", type=int, default=1, help="images in the dumps, axis 0 of every tensor (default 1)")
    imp.add_argument("--force", action="store_true", help="replace an existing golden")

    ver = actions.add_parser("verify", help="check a golden's file sizes and checksums")
    ver.add_argument("directory", type=Path)


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "golden_action", None)
    if action == "import":
        out = args.out or Path("golden") / args.model.stem
        manifest = import_dumps(args.model, args.input_dat, args.output_dat, out, batch=args.batch,
                                overwrite=args.force)
        n_in = sum(t.section == "input" for t in manifest.tensors)
        n_out = sum(t.section == "output" for t in manifest.tensors)
        print(f"imported {n_in} input and {n_out} output tensor(s) into {out}")
        return 0
    if action == "verify":
        store = GoldenStore.open(args.directory, verify="eager")
        m = store.manifest
        total = sum(f.nbytes for f in m.files)
        print(f"{args.directory}: OK - format_version {m.format_version}, {len(m.tensors)} tensor(s), "
              f"{len(m.files)} file(s), {total} bytes, model sha256 {(m.model_sha256 or '?')[:12]}")
        return 0
    print("usage: quant-harness golden {import,verify} ...  (see --help)")
    return 2
