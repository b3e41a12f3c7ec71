"""Strict, typed reading of one TOML table of a suite file.

Why a reader instead of ``dict.get``: a suite is a build gate, so a misspelt key (``cosin_min``) that is
silently ignored turns a gate off without anybody noticing. Every table is therefore read through a
:class:`TableReader`, which refuses unknown keys and wrong types with a :class:`ConfigError` naming the file,
the dotted ``table.key`` and the valid keys or the expected type, and resolves relative paths against the
suite file's folder (never the working directory, so ``pytest`` and ``quant-harness run`` agree from any cwd).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.envvars import expand_variables
from harness.errors import ConfigError
from harness.tasks.ssd import PriorBoxLayer

if TYPE_CHECKING:
    from harness.model.names import LayerNames

_MISSING: Any = object()


def type_name(value: Any) -> str:
    """How TOML would call the value's type, for "Got ... (a string)" messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


class TableReader:
    """One table (``[data]``, ``[gates.layer_overrides]``, ...) of the suite file ``file``.

    ``table`` is the dotted name used in messages. Getters are keyword-only past the key so call sites
    read like the schema: ``r.float("iou_threshold", default=0.5, low=0.0, high=1.0)``.
    """

    def __init__(self, data: Any, *, file: Path, table: str, base_dir: Path | None = None) -> None:
        self.file = file
        self.table = table
        self.base_dir = base_dir if base_dir is not None else file.parent
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"Got [{table}] = {data!r} ({type_name(data)}) in {file}",
                expected=f"[{table}] to be a table",
                remedy=f"write it as a [{table}] section or an inline table {{ key = value }}",
            )
        self.data: Mapping[str, Any] = data

    # --- messages ---------------------------------------------------------------------------------
    def key_name(self, key: str) -> str:
        if not key:
            return self.table
        return f"{self.table}.{key}" if self.table else key

    def error(self, key: str, what: str, *, expected: str, remedy: str | None = None) -> ConfigError:
        return ConfigError(f"Got {self.key_name(key)} {what} in {self.file}", expected=expected, remedy=remedy)

    def type_error(self, key: str, value: Any, expected: str) -> ConfigError:
        return self.error(key, f"= {value!r} ({type_name(value)})", expected=expected)

    # --- structure --------------------------------------------------------------------------------
    def check_keys(self, valid: Iterable[str], *, hint: str | None = None) -> None:
        """Refuse any key not in ``valid``; the message lists the valid keys of this table."""
        valid = list(valid)
        for key in self.data:
            if key not in valid:
                close = [v for v in valid if _similar(key, v)]
                remedy = f"did you mean {close[0]!r}?" if close else "check the spelling, or remove the key"
                if hint:
                    remedy = f"{remedy} ({hint})"
                raise ConfigError(
                    f"Got unknown key {self.key_name(key)} in {self.file}",
                    expected=f"one of the valid keys of [{self.table}]: {', '.join(valid) or '(none)'}",
                    remedy=remedy,
                )

    def has(self, key: str) -> bool:
        return key in self.data

    def sub(self, key: str, *, required: bool = False) -> TableReader | None:
        """A nested table, or None when absent and not required."""
        if key not in self.data:
            if required:
                raise self.error(key, "missing", expected=f"a [{self.key_name(key)}] table")
            return None
        return TableReader(self.data[key], file=self.file, table=self.key_name(key), base_dir=self.base_dir)

    def subs(self, key: str) -> list[TableReader]:
        """An array of tables (``[[postprocess.priors]]``); empty when absent."""
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise self.type_error(key, value, f"an array of tables ([[{self.key_name(key)}]])")
        return [
            TableReader(v, file=self.file, table=f"{self.key_name(key)}[{i}]", base_dir=self.base_dir)
            for i, v in enumerate(value)
        ]

    # --- scalars ----------------------------------------------------------------------------------
    def _get(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "missing", expected=f"{self.key_name(key)} to be set")
        return default

    def str(self, key: str, *, default: Any = _MISSING, choices: Sequence[str] | None = None) -> Any:
        value = self._get(key, default)
        if key not in self.data:
            return value
        if not isinstance(value, str):
            raise self.type_error(key, value, "a string")
        if choices is not None and value not in choices:
            raise self.error(key, f"= {value!r}", expected=f"one of {', '.join(map(repr, choices))}")
        return value

    def bool(self, key: str, *, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if key in self.data and not isinstance(value, bool):
            raise self.type_error(key, value, "a boolean (true or false, unquoted)")
        return value

    def int(self, key: str, *, default: Any = _MISSING, low: int | None = None) -> Any:
        value = self._get(key, default)
        if key not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.type_error(key, value, "an integer")
        if low is not None and value < low:
            raise self.error(key, f"= {value}", expected=f"an integer >= {low}")
        return value

    def float(
        self, key: str, *, default: Any = _MISSING, low: float | None = None, high: float | None = None
    ) -> Any:
        value = self._get(key, default)
        if key not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.type_error(key, value, "a number")
        value = float(value)
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            raise self.error(key, f"= {value}", expected=f"a number in [{lo}, {hi}]")
        return value

    def str_list(self, key: str, *, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if key not in self.data:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.type_error(key, value, "an array of strings")
        return tuple(value)

    def float_list(self, key: str, *, default: Any = _MISSING, length: int | None = None) -> Any:
        value = self._get(key, default)
        if key not in self.data:
            return value
        ok = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok or (length is not None and len(value) != length):
            size = f"{length} " if length is not None else ""
            raise self.type_error(key, value, f"an array of {size}numbers")
        return tuple(float(v) for v in value)

    def int_list(self, key: str, *, default: Any = _MISSING, low: int | None = None) -> Any:
        value = self._get(key, default)
        if key not in self.data:
            return value
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok or (low is not None and any(v < low for v in value)):
            bound = f" >= {low}" if low is not None else ""
            raise self.type_error(key, value, f"an array of integers{bound}")
        return tuple(value)

    def path(self, key: str, *, default: Any = _MISSING) -> Any:
        """A path; relative ones are resolved against the suite file's folder (not the working directory)."""
        value = self._get(key, default)
        if key not in self.data:
            return value
        if not isinstance(value, str) or not value:
            raise self.type_error(key, value, "a non-empty path string (relative to the suite file's folder)")
        return resolve_path(value, self.base_dir)


def resolve_path(value: str | Path, base_dir: Path) -> Path:
    """Absolute, normalised path; ``${NAME}`` expanded; symlinks are kept (resolving them would change what a
    report shows)."""
    path = Path(os.path.expanduser(expand_variables(str(value))))
    return Path(os.path.normpath(path if path.is_absolute() else base_dir / path))


def portable_path(path: Path, base_dir: Path) -> str:
    """``path`` relative to ``base_dir`` when that is possible, POSIX style, so a results file or a golden
    manifest written on one machine means the same on another; absolute otherwise (other drive)."""
    try:
        return Path(os.path.relpath(path, base_dir)).as_posix()
    except ValueError:
        return path.as_posix()


def _similar(a: str, b: str) -> bool:
    """Cheap "did you mean": same letters give or take one edit, or one contains the other."""
    a, b = a.lower(), b.lower()
    if min(len(a), len(b)) >= 3 and (a in b or b in a):
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) <= 1 or sorted(a) == sorted(b)
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


# === the sections of a suite ========================================================================
# (kept next to the reader: each section is a frozen dataclass plus the function that reads its table)

_FORMATS: dict[str, dict[str, str]] = {
    # format -> {key: "required" | "optional"} on top of the keys every format accepts
    "voc": {"root": "required", "split": "optional", "calibration_split": "optional", "classes": "optional"},
    "coco": {"root": "required", "annotations": "required"},
    "classification_folder": {"root": "required", "classes": "optional"},
    "classification_list": {"list": "required", "root": "optional", "classes": "optional"},
    "images": {"root": "required"},
}
_DATA_COMMON = ("format", "calibration", "calibration_max_images", "probe_images", "max_images", "skip_bad",
                "probe_layer_elements")
_TASK_FORMATS = {
    "detection": ("voc", "coco", "images"),
    "classification": ("classification_folder", "classification_list", "images"),
    "layers": tuple(_FORMATS),
}


class _Replaceable:
    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (``dataclasses.replace``, so validation in ``__post_init__`` reruns)."""
        import dataclasses

        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True, kw_only=True)
class DataConfig(_Replaceable):
    """``[data]``. ``root`` means: VOC root (VOCdevkit/VOC2007), COCO image folder, class-folder root,
    base folder of a classification list, or the image folder / list file of ``images``.

    Calibration images come from ``calibration`` (a list file or a folder) or, for VOC only,
    ``calibration_split`` (an ImageSets/Main split name such as ``trainval``): two keys rather than one
    value that is "a path if it exists, else a split", which would change meaning when a file appears.
    """

    format: str
    root: Path | None = None
    split: str | None = None
    annotations: Path | None = None
    list: Path | None = None
    calibration: Path | None = None
    calibration_split: str | None = None
    calibration_max_images: int | None = None
    probe_images: int = 2
    probe_layer_elements: int | None = None
    max_images: int | None = None
    skip_bad: bool = False
    classes: tuple[str, ...] | None = None

    def to_dict(self, base_dir: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = portable_path(value, base_dir) if isinstance(value, Path) else (
                list(value) if isinstance(value, tuple) else value)
        return out


def read_data(r: TableReader, *, task: str) -> DataConfig:
    fmt = r.str("format", choices=_TASK_FORMATS[task])
    spec = _FORMATS[fmt]
    r.check_keys([*_DATA_COMMON, *spec], hint=f"the valid [data] keys depend on format; these are for {fmt!r}")
    for key, need in spec.items():
        if need == "required" and not r.has(key):
            raise r.error(key, f"missing for format = {fmt!r}", expected=f"{r.key_name(key)} to be set")
    if r.has("calibration") and r.has("calibration_split"):
        raise r.error("calibration_split", "together with data.calibration",
                      expected="one source of calibration images", remedy="keep one of the two keys")
    split = r.str("split", default="test" if fmt == "voc" else None)
    return DataConfig(
        format=fmt, root=r.path("root", default=None), split=split, annotations=r.path("annotations", default=None),
        list=r.path("list", default=None), calibration=r.path("calibration", default=None),
        calibration_split=r.str("calibration_split", default=None),
        calibration_max_images=r.int("calibration_max_images", default=None, low=1),
        probe_images=r.int("probe_images", default=2, low=0),
        probe_layer_elements=r.int("probe_layer_elements", default=None, low=1), max_images=r.int("max_images", default=None, low=1),
        skip_bad=r.bool("skip_bad", default=False), classes=r.str_list("classes", default=None),
    )


# --- [postprocess] --------------------------------------------------------------------------------
_PRIOR_KEYS = ("min_sizes", "max_sizes", "aspect_ratios", "flip", "stride", "feature_size", "step", "offset")


@dataclass(frozen=True, kw_only=True)
class SsdPostprocess(_Replaceable):
    """``kind = "ssd"``: Caffe PriorBox priors + decode + DetectionOutput NMS. Defaults are Caffe SSD's
    evaluation settings (confidence 0.01, NMS 0.45, top_k 400, keep_top_k 200, variances 0.1/0.2)."""

    kind: str = "ssd"
    priors: tuple[PriorBoxLayer, ...]
    clip: str = "none"
    variances: tuple[float, float] = (0.1, 0.2)
    score_threshold: float = 0.01
    iou_threshold: float = 0.45
    top_k: int | None = 400
    keep_top_k: int | None = 200
    background_label: int | None = 0
    score_activation: str = "none"
    scores_output: str | None = None
    boxes_output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = _plain(self, skip=("priors",))
        out["priors"] = [_prior_dict(p) for p in self.priors]
        return out


@dataclass(frozen=True, kw_only=True)
class UltrafacePostprocess(_Replaceable):
    """``kind = "ultraface"``: UltraFace priors and decoding; defaults are the upstream demo's."""

    kind: str = "ultraface"
    score_threshold: float = 0.7
    iou_threshold: float = 0.3
    top_k: int | None = 200
    keep_top_k: int | None = None
    scores_output: str | None = None
    boxes_output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True, kw_only=True)
class ClassifierPostprocess(_Replaceable):
    """``kind = "softmax"`` (probabilities for agreement/report) or ``"none"`` (logits as they are; top-k
    is the same either way)."""

    kind: str = "softmax"
    logits_output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


Postprocess = SsdPostprocess | UltrafacePostprocess | ClassifierPostprocess


def read_postprocess(r: TableReader, *, task: str) -> Postprocess:
    kinds = ("ssd", "ultraface") if task == "detection" else ("softmax", "none")
    kind = r.str("kind", choices=kinds)
    if kind in ("softmax", "none"):
        r.check_keys(("kind", "logits_output"), hint=f"keys for kind = {kind!r}")
        return ClassifierPostprocess(kind=kind, logits_output=r.str("logits_output", default=None))
    common = dict(
        score_threshold=("float", dict(low=0.0, high=1.0)), iou_threshold=("float", dict(low=0.0, high=1.0)),
        top_k=("int", dict(low=1)), keep_top_k=("int", dict(low=1)),
        scores_output=("str", {}), boxes_output=("str", {}),
    )
    if kind == "ssd":
        common.update(clip=("str", dict(choices=("none", "corners", "center"))),
                      score_activation=("str", dict(choices=("none", "softmax", "sigmoid"))),
                      background_label=("int", dict(low=0)))
        r.check_keys(("kind", "priors", "variances", *common), hint="keys for kind = 'ssd'")
        priors = tuple(_read_prior(p) for p in r.subs("priors"))
        if not priors:
            raise r.error("priors", "missing", expected="one [[postprocess.priors]] table per PriorBox layer")
        values = _read_values(r, common, SsdPostprocess)
        variances = r.float_list("variances", default=(0.1, 0.2), length=2)
        return SsdPostprocess(priors=priors, variances=variances, **values)
    r.check_keys(("kind", *common), hint="keys for kind = 'ultraface'")
    return UltrafacePostprocess(**_read_values(r, common, UltrafacePostprocess))


def _read_values(r: TableReader, spec: dict[str, tuple[str, dict[str, Any]]], cls: type) -> dict[str, Any]:
    defaults = {f.name: f.default for f in fields(cls)}
    return {key: getattr(r, kind)(key, default=defaults[key], **opts) for key, (kind, opts) in spec.items()}


def _read_prior(r: TableReader) -> PriorBoxLayer:
    r.check_keys(_PRIOR_KEYS)
    step: Any = None
    if r.has("step"):
        raw = r.data["step"]
        step = r.float("step", low=0.0) if not isinstance(raw, list) else r.float_list("step", length=2)
    try:
        return PriorBoxLayer(
            min_sizes=r.float_list("min_sizes"), max_sizes=r.float_list("max_sizes", default=()),
            aspect_ratios=r.float_list("aspect_ratios", default=()), flip=r.bool("flip", default=True),
            stride=r.int("stride", default=None, low=1),
            feature_size=_int_pair(r, "feature_size"), step=step, offset=r.float("offset", default=0.5),
        )
    except ValueError as exc:  # PriorBoxLayer states Caffe's rules as ValueError
        raise ConfigError(f"Got an invalid prior layer [{r.table}] in {r.file}: {exc}",
                          expected="a Caffe PriorBox layer (min_sizes, and stride or feature_size)") from None


def _int_pair(r: TableReader, key: str) -> tuple[int, int] | None:
    value = r.int_list(key, default=None, low=1)
    if value is not None and len(value) != 2:
        raise r.type_error(key, list(value), "[width, height] of positive integers")
    return value


def _prior_dict(p: PriorBoxLayer) -> dict[str, Any]:
    out: dict[str, Any] = {"min_sizes": list(p.min_sizes)}
    if p.max_sizes:
        out["max_sizes"] = list(p.max_sizes)
    if p.aspect_ratios:
        out["aspect_ratios"] = list(p.aspect_ratios)
    out["flip"] = p.flip
    if p.stride is not None:
        out["stride"] = p.stride
    if p.feature_size is not None:
        out["feature_size"] = list(p.feature_size)
    if p.step is not None:
        out["step"] = list(p.step) if isinstance(p.step, tuple) else p.step
    out["offset"] = p.offset
    return out


def _plain(obj: Any, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or value is None:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# --- [metrics] ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class BootstrapConfig(_Replaceable):
    """``[metrics.bootstrap]``: paired bootstrap of fp32 - int8 (see harness.metrics.bootstrap)."""

    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


_VOC_KEYS = ("ap_method", "difficult", "iou_threshold", "pixel_plus_one", "match_rule")


@dataclass(frozen=True, kw_only=True)
class MetricsConfig(_Replaceable):
    """``[metrics]``. VOC options (detection on VOC or plain images) default to the VOC devkit; ``topk``
    (classification) defaults to (1, 5). ``pseudo_ground_truth``: score int8 against the fp32 model's own
    outputs (detections with score >= ``pseudo_ground_truth_score_min``, or the fp32 top-1 class), for real
    models without labelled data; it measures agreement, not accuracy."""

    task: str
    data_format: str
    ap_method: str = "11point"
    difficult: str = "ignore"
    iou_threshold: float = 0.5
    pixel_plus_one: bool = True
    match_rule: str = ">="
    topk: tuple[int, ...] = (1, 5)
    pseudo_ground_truth: bool = False
    pseudo_ground_truth_score_min: float = 0.5
    bootstrap: BootstrapConfig = BootstrapConfig()

    @property
    def valid_keys(self) -> tuple[str, ...]:
        return _metric_keys(self.task, self.data_format)

    def to_dict(self) -> dict[str, Any]:
        out = {k: (list(v) if isinstance(v := getattr(self, k), tuple) else v)
               for k in self.valid_keys if k != "bootstrap"}
        out["bootstrap"] = _plain(self.bootstrap)
        return out


def _metric_keys(task: str, data_format: str) -> tuple[str, ...]:
    if task == "classification":
        return ("topk", "pseudo_ground_truth", "bootstrap")
    voc = _VOC_KEYS if data_format != "coco" else ()
    return (*voc, "pseudo_ground_truth", "pseudo_ground_truth_score_min", "bootstrap")


def read_metrics(r: TableReader, *, task: str, data_format: str) -> MetricsConfig:
    r.check_keys(_metric_keys(task, data_format), hint=f"keys for task = {task!r}, format = {data_format!r}")
    boot = r.sub("bootstrap")
    bootstrap = BootstrapConfig()
    if boot is not None:
        boot.check_keys(("n_resamples", "confidence", "seed"))
        bootstrap = BootstrapConfig(n_resamples=boot.int("n_resamples", default=1000, low=1),
                                    confidence=boot.float("confidence", default=0.95, low=0.5, high=0.999999),
                                    seed=boot.int("seed", default=0, low=0))
    topk = r.int_list("topk", default=(1, 5), low=1)
    if not topk:
        raise r.type_error("topk", [], "a non-empty array of integers >= 1")
    return MetricsConfig(
        task=task, data_format=data_format,
        ap_method=r.str("ap_method", default="11point", choices=("11point", "area")),
        difficult=r.str("difficult", default="ignore", choices=("ignore", "count")),
        iou_threshold=r.float("iou_threshold", default=0.5, low=0.0, high=1.0),
        pixel_plus_one=r.bool("pixel_plus_one", default=True),
        match_rule=r.str("match_rule", default=">=", choices=(">=", ">")),
        topk=tuple(sorted(set(topk) | {1})),
        pseudo_ground_truth=r.bool("pseudo_ground_truth", default=False),
        pseudo_ground_truth_score_min=r.float("pseudo_ground_truth_score_min", default=0.5, low=0.0, high=1.0),
        bootstrap=bootstrap,
    )


def metric_names(task: str, data_format: str, metrics: MetricsConfig | None) -> tuple[str, ...]:
    """The task metrics a suite produces (valid ``[gates.metrics]`` keys); the first is the headline."""
    if task == "detection":
        return ("coco_ap", "coco_ap50", "coco_ap75") if data_format == "coco" else ("map",)
    if task == "classification":
        ks = metrics.topk if metrics is not None else (1, 5)
        return (*(f"top{k}" for k in ks), "mean_class_accuracy")
    return ()


# --- [quant] --------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class QuantConfig(_Replaceable):
    """``[quant]``: a target profile, flat overrides of its fields (validated by
    :meth:`harness.quant.profiles.Profile.with_overrides`), and optionally a calibration table to import
    instead of calibrating. ``overrides`` is stored as sorted (key, frozen value) pairs so the config is
    hashable; :attr:`override_dict` gives them back as TOML-shaped values."""

    profile: str
    overrides: tuple[tuple[str, Any], ...] = ()
    table: Path | None = None

    @property
    def override_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.overrides}

    @property
    def float_layers(self) -> tuple[str, ...]:
        return tuple(self.override_dict.get("float_layers", ()))

    def resolve(self) -> Any:
        """The :class:`~harness.quant.profiles.Profile` with the overrides applied."""
        from harness.quant.profiles import get_profile

        return get_profile(self.profile, **self.override_dict)

    def resolve_layers(self, names: LayerNames, *, file: str) -> Any:
        """:meth:`resolve`, with every per-layer key (``float_layers``, ``high_precision_layers``) mapped to
        nodes of the model, so a name that matches nothing is a ConfigError naming ``[quant] <key> (file)``
        and the closest names, not a silent no-op. Needs the model, hence not done by :func:`read_quant`."""
        return self.resolve().with_layer_names(
            lambda key, given: names.resolve(given, where=f"[quant] {key} ({file})"))

    def to_dict(self, base_dir: Path) -> dict[str, Any]:
        out: dict[str, Any] = {"profile": self.profile}
        if self.table is not None:
            out["table"] = portable_path(self.table, base_dir)
        out.update(self.override_dict)
        return out


def read_quant(r: TableReader) -> QuantConfig:
    from harness.quant.profiles import PROFILES, override_keys

    r.check_keys(("profile", "table", *override_keys()),
                 hint="besides profile and table, every key overrides a field of the profile")
    profile = r.str("profile", choices=tuple(PROFILES))
    overrides = tuple(sorted((k, _freeze(v)) for k, v in r.data.items() if k not in ("profile", "table")))
    config = QuantConfig(profile=profile, overrides=overrides, table=r.path("table", default=None))
    try:
        config.resolve()
    except ConfigError as exc:
        raise ConfigError(f"In {r.file} [quant]: {exc.what}", expected=exc.expected, remedy=exc.remedy) from None
    except (TypeError, ValueError) as exc:  # a wrong-typed override reaching a dataclass
        raise ConfigError(f"In {r.file} [quant]: {exc}", expected="override values of the profile field's type",
                          remedy="see harness/quant/profiles.py for each field") from None
    return config


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return ("__table__", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__table__":
        return {k: _thaw(v) for k, v in value[1]}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value
