"""``quant-harness calibrate``: calibrate a model on a folder of images and write its table.

What people do today is ``ncnn2table --images=... --mean=... --norm=...`` or tpu-mlir's
``run_calibration``; this gives them the same files from the harness's own calibrators, so the
table they deploy is the table the harness simulates. The output format follows the suffix:
``.table`` (ncnn: weight and activation scales of the plan), ``.cali`` (tpu-mlir calibration table:
``name threshold min max`` per calibrated tensor) or ``.json`` (every range, with the profile).
``--qdq-out`` also writes the simulated (QDQ) model.

Images are decoded and preprocessed on the fly in each calibration pass (KL needs two), so
memory does not grow with ``--max-images``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from harness.errors import ConfigError

SUFFIXES = (".table", ".cali", ".json")
JSON_FORMAT_VERSION = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("calibrate", help="calibrate a model on images; write .table/.cali/.json",
                                   description=__doc__.splitlines()[0])
    parser.set_defaults(func=run)
    parser.add_argument("model", type=Path, help="ONNX model")
    parser.add_argument("--images", required=True, type=Path, help="folder of images, or a text file listing them")
    parser.add_argument("--profile", required=True, help="target profile, e.g. ncnn-int8, bm1684-int8, ort-qdq")
    parser.add_argument("--method", choices=("kl", "minmax", "percentile", "mse"),
                        help="activation calibration method (default: the profile's)")
    parser.add_argument("--mean", type=float, nargs="+", help="per-channel mean in 0..255 pixel units (model channel order)")
    parser.add_argument("--std", type=float, nargs="+", help="per-channel std in pixel units (x = (p - mean) / std)")
    parser.add_argument("--channel-order", choices=("rgb", "bgr", "gray"), default="bgr",
                        help="model input channel order with --mean/--std (default bgr, as ncnn/OpenCV)")
    parser.add_argument("--preprocess", type=Path, help="TOML file with a [preprocess] table (instead of --mean/--std)")
    parser.add_argument("--out", required=True, type=Path, help="output file: .table, .cali or .json")
    parser.add_argument("--qdq-out", type=Path, help="also write the QDQ (simulated) ONNX model here")
    parser.add_argument("--max-images", type=int, help="use the first N images (sorted order)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="profile override, VALUE as JSON or a bare string (e.g. weight_granularity=per_tensor)")
    parser.add_argument("--six-bit", action="store_true", help="ncnn: 6-bit weight scales for 3x3 stride-1 convs")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: $QUANT_HARNESS_THREADS or cores)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from harness.data import ImageListDataset, PreprocessSpec, preprocess
    from harness.model import load_model
    from harness.model.names import LayerNames
    from harness.quant import get_profile, quantize_model

    out: Path = args.out
    if out.suffix not in SUFFIXES:
        raise ConfigError(f"Got --out {out}", expected=f"a file ending in {', '.join(SUFFIXES)}",
                          remedy="name the output e.g. model.table (ncnn), model.cali (tpu-mlir) or ranges.json")
    for target in (out, args.qdq_out):
        if target is not None and target.exists() and not args.force:
            raise ConfigError(f"{target} already exists", expected="a new output path",
                              remedy="pass --force to overwrite it, or choose another name")
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"Got --max-images {args.max_images}", expected="a positive number", remedy="drop the flag")
    profile = get_profile(args.profile, **_overrides(args.overrides))
    if args.method:
        profile = profile.with_overrides(activation_method=args.method, activation_params={})
    model = load_model(args.model)
    # --set float_layers=... names layers of this model: resolve them (tensor names too) or refuse
    names = LayerNames.of(model.proto, model=args.model.name)
    profile = profile.with_layer_names(lambda key, given: names.resolve(given, where=f"--set {key}"))
    spec = _spec(args, model, PreprocessSpec)
    dataset = ImageListDataset(args.images, limit=args.max_images)
    n_images = len(dataset)

    def batches() -> Iterator[np.ndarray]:
        for sample in dataset:
            x, _ = preprocess(sample.read(), spec)
            yield x[None]

    progress, close = _progress(n_images, disabled=args.no_progress)
    try:
        qm = quantize_model(model, profile, batches, threads=args.threads, progress=progress,
                            write_model=args.qdq_out is not None)
    finally:
        close()
    _write_output(out, qm, model, n_images, six_bit=args.six_bit)
    if args.qdq_out is not None:
        if qm.qdq is None:
            raise ConfigError("The QDQ writer (harness.quant.simulate) is not available", expected="a QDQ writer",
                              remedy="drop --qdq-out")
        onnx.save(qm.qdq.proto, args.qdq_out)
    print(f"calibrated {len(qm.ranges)} tensors on {n_images} images with {profile.name} "
          f"({profile.activation_method}); wrote {out}", file=sys.stderr)
    return 0


def _overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Got --set {item!r}", expected="KEY=VALUE", remedy="e.g. --set float_layers='[\"fc\"]'")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _spec(args: argparse.Namespace, model: Any, spec_cls: Any) -> Any:
    if args.preprocess is not None:
        if args.mean or args.std:
            raise ConfigError("Got --preprocess together with --mean/--std", expected="one way to give preprocessing",
                              remedy="put mean/std into the TOML file, or drop --preprocess")
        try:
            import tomllib
        except ModuleNotFoundError:  # pragma: no cover - Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            table = tomllib.loads(args.preprocess.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"Cannot read {args.preprocess}: {exc}", expected="a TOML file",
                              remedy="check the path and the TOML syntax") from None
        table = table.get("preprocess", table)
        if "size" not in table:
            table = {**table, "size": list(_model_size(model))}
        return spec_cls.from_dict(table, base_dir=args.preprocess.parent)
    if args.mean is None or args.std is None:
        raise ConfigError("Got no preprocessing", expected="--mean and --std, or --preprocess FILE.toml",
                          remedy="e.g. --mean 123.675 116.28 103.53 --std 58.395 57.12 57.375 --channel-order rgb")
    return spec_cls(size=_model_size(model), channel_order=args.channel_order, mean=tuple(args.mean), std=tuple(args.std))


def _model_size(model: Any) -> tuple[int, int]:
    """(width, height) of an NCHW model input with fixed spatial dimensions."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in model.proto.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not dims[2] or not dims[3]:
        raise ConfigError(f"Model input has shape {dims}", expected="NCHW with fixed height and width",
                          remedy="give size in a --preprocess TOML file")
    return int(dims[3]), int(dims[2])


def _progress(total: int, *, disabled: bool):
    if disabled:
        return None, lambda: None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(phase: str, n: int) -> None:
        if phase not in bars:
            for bar in bars.values():
                bar.close()
            bars[phase] = tqdm(total=total, desc=f"calibrate ({phase})", unit="img", file=sys.stderr, leave=False)
        bars[phase].update(n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return progress, close


def _write_output(out: Path, qm: Any, model: Any, n_images: int, *, six_bit: bool) -> None:
    from harness.quant import plan_to_ncnn_table, ranges_to_tpu_table, write_ncnn_table, write_tpu_calibration_table
    from harness.quant.tables import _write_atomic

    if out.suffix == ".table":
        write_ncnn_table(plan_to_ncnn_table(qm.folded, qm.plan, six_bit=six_bit), out)
    elif out.suffix == ".cali":
        comments = [f"quant-harness calibration of {model.path.name} (sha256 {model.sha256[:12]})",
                    f"profile {qm.profile.name}, method {qm.profile.activation_method}, {n_images} images",
                    "name threshold min max"]
        write_tpu_calibration_table(ranges_to_tpu_table(qm.ranges, comments=comments, proto=qm.folded), out)
    else:
        doc = {
            "format_version": JSON_FORMAT_VERSION,
            "model": str(model.path), "model_sha256": model.sha256,
            "profile": qm.profile.name, "method": qm.profile.activation_method, "images": n_images,
            "sites": [list(s) for s in qm.placement.sites],
            "ranges": {name: {"lo": r.lo, "hi": r.hi, "threshold": r.threshold, "observed_min": r.observed_min,
                              "observed_max": r.observed_max, "method": r.method} for name, r in qm.ranges.items()},
        }
        _write_atomic(out, json.dumps(doc, indent=1) + "\n")
