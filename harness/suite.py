"""Suites: ``suites/NAME.toml`` loaded into frozen dataclasses (the schema is documented in docs/suites.md).

A suite is model + data + preprocessing + quantisation profile + gates. It is immutable: the CLI and the
pytest plugin derive variants with :meth:`Suite.replace` (``suite.replace(data=suite.data.replace(max_images=8))``)
instead of mutating the loaded one, so what a report says was run is what the file says, plus named changes.

Paths are resolved against the suite file's folder and stored absolute; :meth:`Suite.to_dict` writes them back
relative to that folder so results files and golden manifests are portable between machines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 needs `tomli; python_version < '3.11'`
    import tomli as tomllib  # type: ignore[no-redef]

from harness.data.preprocess import PreprocessSpec
from harness.envvars import ENV_REFERENCE, unset_variables
from harness.errors import ConfigError
from harness.gates import CHECKS, GatesConfig
from harness.suite_schema import TableReader, portable_path
from harness.suite_schema import (  # noqa: F811 (sections live with the reader)
    DataConfig,
    MetricsConfig,
    Postprocess,
    QuantConfig,
    _Replaceable,
    metric_names,
    read_data,
    read_metrics,
    read_postprocess,
    read_quant,
)

__all__ = [
    "DataConfig", "MetricsConfig", "ModelConfig", "Postprocess", "QuantConfig", "Suite", "SuiteUnavailable",
    "discover_suites", "load_suite", "suite_from_dict",
]

TASKS: tuple[str, ...] = ("detection", "classification", "layers")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_TOP_LEVEL = ("suite", "model", "preprocess", "data", "postprocess", "quant", "metrics", "gates")
#: Tables whose strings may name files, and so may use ``${NAME}`` environment variables.
_PATH_TABLES = ("model", "preprocess", "data", "quant")


class SuiteUnavailable(ConfigError):
    """The suite's files live behind an environment variable that is not set (e.g. the real third-party models
    behind ``QUANT_HARNESS_REALMODELS``). Not a broken suite: the plugin skips it and ``quant-harness run``
    lists it as skipped, with this message as the reason."""

    def __init__(self, name: str, path: Path, variables: list[str]) -> None:
        self.name, self.path, self.variables = name, path, variables
        names = ", ".join(variables)
        super().__init__(f"Suite {name!r} ({path.name}) needs the environment variable {names}, which is not set",
                         expected=f"{names} to name the folder its paths start from",
                         remedy=f"export {variables[0]}=<folder> (.ci/run sets QUANT_HARNESS_REALMODELS to "
                                "../shared/realmodels) and run again")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Replaceable):
    """``[model]``: the ONNX file under test and an optional reference (e.g. the ONNX of a Caffe twin)."""

    path: Path
    reference: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Suite(_Replaceable):
    """One loaded suite. ``postprocess`` and ``metrics`` are None for ``task = "layers"``."""

    path: Path
    name: str
    task: str
    description: str
    expect: str
    expect_reason: str | None
    model: ModelConfig
    preprocess: PreprocessSpec
    data: DataConfig
    postprocess: Postprocess | None
    quant: QuantConfig
    metrics: MetricsConfig | None
    gates: GatesConfig
    golden_from: str | None = None
    #: ``[suite] allow_nonfinite``: NaN/Inf in the model's tensors are expected (the finite check reports them
    #: without failing, and goldens may hold them); see docs/suites.md.
    allow_nonfinite: bool = False
    #: Checks that fail too as a direct consequence of ``expect_reason`` (``expect = "fail"`` only); with it they
    #: are the only checks allowed, and required, to fail.
    expect_also: tuple[str, ...] = ()
    #: The environment variables its paths use (``${NAME}``), already expanded; not compared, since
    #: :meth:`to_dict` writes the expanded paths.
    variables: tuple[str, ...] = field(default=(), compare=False)

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the file are resolved against."""
        return self.path.parent

    @property
    def expected_failures(self) -> tuple[str, ...]:
        """Every check a must-fail suite requires to fail (``expect_reason`` first); empty for ``expect = "pass"``."""
        return (self.expect_reason, *self.expect_also) if self.expect_reason is not None else ()

    @property
    def metric_names(self) -> tuple[str, ...]:
        return metric_names(self.task, self.data.format, self.metrics)

    def to_dict(self) -> dict[str, Any]:
        """The suite as TOML-shaped plain data, paths relative to the suite folder; :func:`suite_from_dict`
        with the same ``path`` gives an equal suite. Used for results files and golden manifests."""
        base = self.base_dir
        suite: dict[str, Any] = {"name": self.name, "task": self.task, "description": self.description,
                                 "expect": self.expect}
        if self.expect_reason is not None:
            suite["expect_reason"] = self.expect_reason
        if self.expect_also:
            suite["expect_also"] = list(self.expect_also)
        if self.golden_from is not None:
            suite["golden_from"] = self.golden_from
        if self.allow_nonfinite:
            suite["allow_nonfinite"] = True
        model: dict[str, Any] = {"path": portable_path(self.model.path, base)}
        if self.model.reference is not None:
            model["reference"] = portable_path(self.model.reference, base)
        out: dict[str, Any] = {"suite": suite, "model": model, "preprocess": self.preprocess.to_dict(),
                               "data": self.data.to_dict(base)}
        if self.postprocess is not None:
            out["postprocess"] = self.postprocess.to_dict()
        out["quant"] = self.quant.to_dict(base)
        if self.metrics is not None:
            out["metrics"] = self.metrics.to_dict()
        out["gates"] = self.gates.to_dict()
        return out


def load_suite(path: str | Path) -> Suite:
    """Read and validate one suite file; every problem is a :class:`ConfigError` naming the file and key."""
    path = Path(path).expanduser().absolute()
    return suite_from_dict(_load_toml(path), path=path)


def _load_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Suite file {path} does not exist", expected="a suites/*.toml file",
                          remedy="check the path; `quant-harness run` with no argument runs every suites/*.toml")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Suite file {path} is not valid TOML: {exc}", expected="TOML (https://toml.io)",
                          remedy="fix the syntax at the line and column named") from None


def suite_from_dict(data: Mapping[str, Any], *, path: str | Path) -> Suite:
    """Build a suite from parsed TOML ``data`` as if it had been read from ``path``."""
    path = Path(path).expanduser().absolute()
    root = TableReader(data, file=path, table="")
    root.check_keys(_TOP_LEVEL, hint="the top level holds tables only")
    info = root.sub("suite") or TableReader({}, file=path, table="suite")
    info.check_keys(("name", "task", "description", "expect", "expect_reason", "expect_also", "golden_from",
                     "allow_nonfinite"))
    name = _suite_name(info, path)
    texts = [text for table in _PATH_TABLES for text in _strings(data.get(table))]
    if missing := sorted({v for text in texts for v in unset_variables(text)}):
        raise SuiteUnavailable(name, path, missing)
    task = info.str("task", choices=TASKS)
    expect = info.str("expect", default="pass", choices=("pass", "fail"))
    expect_reason = info.str("expect_reason", default=None, choices=CHECKS)
    if expect == "fail" and expect_reason is None:
        raise info.error("expect_reason", "missing while expect = 'fail'",
                         expected=f"the check that must fail, one of {', '.join(CHECKS)}",
                         remedy='expect_reason = "layerwise" (a strict expected failure names what must fail)')
    if expect == "pass" and expect_reason is not None:
        raise info.error("expect_reason", f"= {expect_reason!r} while expect = 'pass'",
                         expected="expect_reason only with expect = 'fail'", remedy="remove expect_reason")
    expect_also = _expect_also(info, expect, expect_reason)

    model_r = root.sub("model", required=True)
    assert model_r is not None
    model_r.check_keys(("path", "reference"))
    model = ModelConfig(path=model_r.path("path"), reference=model_r.path("reference", default=None))

    pre_r = root.sub("preprocess", required=True)
    assert pre_r is not None
    try:
        preprocess = PreprocessSpec.from_dict(pre_r.data, base_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"In {path} [preprocess]: {exc.what}", expected=exc.expected, remedy=exc.remedy) from None

    data_r = root.sub("data", required=True)
    assert data_r is not None
    data = read_data(data_r, task=task)
    if task == "layers":
        for table in ("postprocess", "metrics"):
            if root.has(table):
                raise root.error(table, "in a task = 'layers' suite",
                                 expected="no task metrics for a layers-only suite",
                                 remedy=f"remove [{table}] or set [suite] task to detection or classification")
        postprocess, metrics = None, None
    else:
        post_r = root.sub("postprocess", required=True)
        assert post_r is not None
        postprocess = read_postprocess(post_r, task=task)
        metrics = read_metrics(root.sub("metrics") or TableReader({}, file=path, table="metrics"),
                               task=task, data_format=data.format)
        if data.format == "images" and not metrics.pseudo_ground_truth:
            raise root.error("metrics", "missing pseudo_ground_truth = true with [data] format = 'images'",
                             expected="labels for task metrics, or fp32 outputs used as ground truth",
                             remedy="set [metrics] pseudo_ground_truth = true, or use a labelled data format")
    quant = read_quant(root.sub("quant", required=True))  # type: ignore[arg-type]
    if data.calibration is None and data.calibration_split is None and quant.table is None:
        raise data_r.error("calibration", "missing", expected="calibration images ([data] calibration or "
                           "calibration_split) or a table to import ([quant] table)")
    names = metric_names(task, data.format, metrics)
    gates = GatesConfig.from_table(root.sub("gates"), metric_names=names, headline=names[0] if names else None)
    return Suite(path=path, name=name, task=task, description=info.str("description", default=""), expect=expect,
                 expect_reason=expect_reason, model=model, preprocess=preprocess, data=data,
                 postprocess=postprocess, quant=quant, metrics=metrics, gates=gates,
                 golden_from=_golden_from(info, name), expect_also=expect_also,
                 allow_nonfinite=info.bool("allow_nonfinite", default=False),
                 variables=tuple(sorted({v for text in texts for v in ENV_REFERENCE.findall(text)})))


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a parsed TOML value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _expect_also(info: TableReader, expect: str, expect_reason: str | None) -> tuple[str, ...]:
    """``expect_also``: the other checks a must-fail suite's defect makes fail (each must fail, nothing else may)."""
    also = info.str_list("expect_also", default=())
    if also and expect != "fail":
        raise info.error("expect_also", f"= {list(also)!r} while expect = 'pass'",
                         expected="expect_also only with expect = 'fail'", remedy="remove expect_also")
    for check in also:
        if check not in CHECKS or check == expect_reason or also.count(check) > 1:
            what = "is expect_reason already" if check == expect_reason else (
                "is listed twice" if check in CHECKS else "is not a check name")
            raise info.error("expect_also", f"entry {check!r} {what}",
                             expected=f"other check names, once each, from {', '.join(CHECKS)}",
                             remedy=f'e.g. expect_also = ["fp32-golden"] beside expect_reason = "input-parity"')
    return tuple(also)


def _golden_from(info: TableReader, name: str) -> str | None:
    """Another suite whose golden fp32 dumps this suite compares against (same model, other profile)."""
    other = info.str("golden_from", default=None)
    if other is not None and (not _NAME_RE.match(other) or other == name):
        raise info.error("golden_from", f"= {other!r}", expected="the name of another suite",
                         remedy="name the suite whose golden holds this model's fp32 dumps")
    return other


def _suite_name(info: TableReader, path: Path) -> str:
    """The name doubles as a directory name (golden/<name>/, reports/<name>/), so it must be safe for one."""
    name = info.str("name", default=path.stem)
    if not _NAME_RE.match(name) or name in (".", "..") or name.startswith("."):
        where = "[suite] name" if info.has("name") else f"the file name {path.name!r} (default suite name)"
        raise ConfigError(f"Got suite name {name!r} from {where} in {path}",
                          expected="letters, digits, '_', '.', '-' only, not starting with '.' (it names the golden "
                                   "and report folders)",
                          remedy='set [suite] name = "my_suite" or rename the file')
    return name


def discover_suites(paths: Iterable[str | Path]) -> list[Path]:
    """Suite files named directly, plus every ``*.toml`` directly inside named folders; sorted, unique.

    Folders are not searched recursively: ``suites/assets/`` holds data, not suites.
    """
    found: set[Path] = set()
    for p in paths:
        p = Path(p).expanduser().absolute()
        if p.is_dir():
            found.update(q for q in p.glob("*.toml") if q.is_file() and not q.name.startswith("."))
        elif p.is_file():
            if p.suffix != ".toml":
                raise ConfigError(f"Got {p}", expected="a .toml suite file or a folder of them")
            found.add(p)
        else:
            raise ConfigError(f"Suite path {p} does not exist", expected="a .toml file or a folder",
                              remedy="check the path")
    return sorted(found, key=lambda q: q.as_posix().encode("utf-8"))
