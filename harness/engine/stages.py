"""The expensive steps of a suite, each run at most once and shared by the checks that need it.

``SuiteStages`` is lazy: asking only for ``leakage`` never loads the model, asking for ``input-parity``
only preprocesses the probe images. Stages hold their results in memory for the checks of the same
suite (a suite's items run back to back in one process; see ``harness.pytest_plugin``).
"""

from __future__ import annotations

import base64
import json
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from harness.compare.layerwise import LayerwiseComparison, LayerwiseResult, layer_regions
from harness.data import ImageMeta
from harness.engine.baseline import provenance
from harness.engine.data import SuiteData, load_suite_data
from harness.engine.finite import NonfiniteCounter, blame_nonfinite_outputs
from harness.engine.golden_io import GoldenHandle, exists, golden_dir, golden_lock
from harness.engine.layers import layer_tensors, sample_layer
from harness.engine.task import MetricsSummary, make_task
from harness.errors import CalibrationError, ConfigError, GoldenMissingError, HarnessError
from harness.golden.store import GoldenStore, GoldenWriter
from harness.golden.weights import WEIGHTS_FILE, weight_records, weights_to_json
from harness.model import load_model, make_session
from harness.model.graph import TensorInfo, tensor_list
from harness.model.load import Model
from harness.model.names import LayerNames
from harness.model.runner import TapRunner
from harness.model.session import BuiltModel
from harness.quant import (
    ALL_CONSUMERS, QuantPlan, build_plan, fold_batchnorm, ncnn_table_to_plan, plan_to_ncnn_table,
    quantize_model, ranges_to_tpu_table, read_ncnn_table, read_tpu_calibration_table, tpu_table_to_ranges,
)
from harness.quant.calibration import as_model, write_qdq
from harness.quant.plan_tables import warn_unknown_rows
from harness.quant.simulate import mode_runner, mode_session
from harness.quant.tables import format_ncnn_table, format_tpu_calibration_table
from harness.suite import Suite

#: Layer dumps are stored as float16: the demo detector's 56 layers are 3.4 MB per image in float32 and the
#: golden budget is about 20 MB for all suites. Comparisons against them allow float16's own rounding.
LAYER_DUMP_DTYPE = np.float16
log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
_THUMB_MAX = 400


@dataclass
class Quantized:
    """The quantized model of a suite: the plan, the calibrated ranges (empty for an imported ncnn table)
    and the QDQ model that simulates it."""

    plan: QuantPlan
    ranges: dict[str, Any]
    qdq: Any  # simulate.QdqModel
    table_text: tuple[str, str] | None  # (file name, text) of the toolchain's own table


def stack(values: list[np.ndarray]) -> np.ndarray:
    """Per-image tensors -> one ``[N, ...]`` block (the golden layout): concatenated on the batch axis when
    each has a leading batch of 1, else stacked on a new axis (tensors without a batch axis)."""
    if all(v.ndim >= 1 and v.shape[0] == 1 for v in values):
        return np.concatenate(values)
    return np.stack(values)


@dataclass
class ProbeRun:
    inputs: np.ndarray  # [N, ...] stacked model inputs (batch of one each)
    metas: list[ImageMeta]
    layers: dict[str, list[np.ndarray]]  # fp32 (BN-folded) layer tensors, one array per probe image
    outputs: dict[str, list[np.ndarray]]  # fp32 graph outputs of the model as given, per probe image


@dataclass
class ReferenceRun:
    """The reference model's tensors on the probe images at the ``shared`` layers (names and shapes both models
    have, topological order of the suite's model; graph outputs with matching names are among them)."""

    path: Path
    values: dict[str, list[np.ndarray]]
    shared: list[str]


def _same_shape(a: TensorInfo, b: TensorInfo) -> bool:
    """Equal static shapes; unknown dimensions (None or symbolic) match anything."""
    if a.shape is None or b.shape is None:
        return True
    return len(a.shape) == len(b.shape) and all(
        not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(a.shape, b.shape))


@dataclass
class QuantProbeRun:
    layerwise: LayerwiseResult
    outputs: dict[str, list[np.ndarray]]  # simulate mode, per probe image
    kernel_outputs: dict[str, list[np.ndarray]]  # int8-kernels mode (onnxruntime optimisations on)
    nonfinite: NonfiniteCounter = field(default_factory=NonfiniteCounter)  # simulate mode, every layer


@dataclass
class Evaluation:
    metrics: MetricsSummary
    probes: list[dict[str, Any]]
    nonfinite: NonfiniteCounter = field(default_factory=NonfiniteCounter)  # fp32 and quantized outputs


@dataclass
class SuiteStages:
    suite: Suite
    golden_root: Path | None = None
    golden_update: bool = False
    threads: int | None = None
    progress: Progress | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def _tick(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    # -- inputs ---------------------------------------------------------------------------------
    @cached_property
    def data(self) -> SuiteData:
        return load_suite_data(self.suite)

    @cached_property
    def model(self) -> Model:
        return load_model(self.suite.model.path)

    @cached_property
    def input_name(self) -> str:
        names = self.model.input_names
        if len(names) != 1:
            raise ConfigError(f"Model {self.suite.model.path} has {len(names)} inputs {names}",
                              expected="one image input", remedy="suites support single-input image models")
        return names[0]

    @cached_property
    def profile(self) -> Any:
        return self.suite.quant.resolve()

    @cached_property
    def _folding(self) -> tuple[onnx.ModelProto, dict[str, str]]:
        model, pairs = fold_batchnorm(self.model.proto)
        return model, {p.node: p.batchnorm for p in pairs}

    @cached_property
    def folded(self) -> onnx.ModelProto:
        """The model with every BatchNormalization folded into its Conv/Gemm (which keeps its node name)."""
        return self._folding[0]

    @cached_property
    def qdq_source(self) -> BuiltModel:
        """How errors name the QDQ model this suite builds, with the command that writes it to a file."""
        suite = self.suite
        images = suite.data.calibration or "<the suite's calibration images>"
        sets = "".join(f" --set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in suite.quant.override_dict.items())
        inspect = (f"quant-harness calibrate {suite.model.path} --profile {suite.quant.profile}{sets} "
                   f"--preprocess {suite.path} --images {images} --out ranges.json --qdq-out qdq.onnx")
        return BuiltModel(what="the int8 simulation (QDQ) model", origin=str(suite.model.path),
                          profile=self.profile.name, inspect=inspect)

    @cached_property
    def layers(self) -> list[TensorInfo]:
        """Compared tensors in topological order (graph outputs included)."""
        return layer_tensors(self.folded)

    @cached_property
    def task(self) -> Any:
        return make_task(self.suite, self.data.class_names, self.data.coco_category_ids)

    @cached_property
    def fp32_session(self) -> Any:
        """The model as given, untapped: its outputs are what a deployment compares against."""
        return make_session(self.model.serialized(), threads=self.threads, source=str(self.suite.model.path))

    # -- fp32 on the probe images -------------------------------------------------------------
    @cached_property
    def probe(self) -> ProbeRun:
        start = time.perf_counter()
        probes = self.data.probes
        if not probes:
            raise ConfigError(f"Suite {self.suite.name!r} has no probe images", expected="[data] probe_images >= 1",
                              remedy="set [data] probe_images = 1 or more")
        # The user's model loads and runs first on each image: if it fails, the error is about it, and a
        # failure of the folded copy after it is the harness's.
        plain = self.fp32_session
        runner = TapRunner(as_model(self.folded), taps=[t.name for t in self.layers], threads=self.threads,
                           source=BuiltModel(what="the BatchNorm-folded fp32 copy",
                                             origin=str(self.suite.model.path)))
        names = [o.name for o in plain.get_outputs()]
        inputs, metas, layers, outputs = [], [], {}, {}
        for x, meta in self.data.inputs(probes):
            inputs.append(x)
            metas.append(meta)
            for name, value in zip(names, plain.run(names, {self.input_name: x})):
                outputs.setdefault(name, []).append(value)
            for name, value in runner.run(x).items():
                layers.setdefault(name, []).append(value)
        self.timing["fp32_probe"] = time.perf_counter() - start
        return ProbeRun(np.concatenate(inputs), metas, layers, outputs)

    # -- the reference model ([model] reference) on the probe images ----------------------------------
    @cached_property
    def reference_probe(self) -> ReferenceRun:
        """The reference model (e.g. the ONNX twin of a Caffe model) on the same probe inputs, tapped at every
        layer whose tensor name and shape it shares with this suite's model. Both sides are BN-folded, so a
        Caffe BatchNorm+Scale pair and an ONNX BatchNormalization end up as the same convolution."""
        path = self.suite.model.reference
        if path is None:
            raise ConfigError(f"Suite {self.suite.name!r} has no [model] reference", expected="a reference model",
                              remedy="set [model] reference, or do not run the reference check")
        start = time.perf_counter()
        reference = load_model(path)
        folded = fold_batchnorm(reference.proto)[0]
        theirs = {t.name: t for t in tensor_list(folded)}
        shared = [t.name for t in self.layers if t.name in theirs and _same_shape(t, theirs[t.name])]
        runner = TapRunner(as_model(folded), taps=shared, threads=self.threads)
        if len(runner.input_names) != 1:
            raise ConfigError(f"Reference model {path} has inputs {runner.input_names}", expected="one image input")
        probe, values = self.probe, {}
        for i in range(probe.inputs.shape[0]):
            for name, value in runner.run({runner.input_names[0]: probe.inputs[i: i + 1]}).items():
                values.setdefault(name, []).append(value)
        self.timing["reference"] = time.perf_counter() - start
        return ReferenceRun(path=path, values=values, shared=shared)

    # -- quantisation ---------------------------------------------------------------------------
    @cached_property
    def quantized(self) -> Quantized:
        start = time.perf_counter()
        table = self.suite.quant.table
        # Every layer name of the suite is checked here, the first stage that knows the model, and before
        # calibrating: a name that matches nothing is the suite's ConfigError, never a silent no-op.
        names = LayerNames(self.folded, original=self.model.proto, model=self.suite.model.path.name,
                           layers=[t.name for t in self.layers])
        for override in self.suite.gates.layer_overrides:
            override.check_against(names, file=self.suite.path.name)
        profile = self.suite.quant.resolve_layers(names, file=self.suite.path.name)
        if table is not None and table.suffix == ".table":
            plan = ncnn_table_to_plan(self.folded, read_ncnn_table(table), profile, names=names,
                                      source=f"the ncnn table {table.name}")
            ranges: dict[str, Any] = {}
        elif table is not None:
            tpu_table = read_tpu_calibration_table(table)
            warn_unknown_rows(tpu_table, names, source=f"the calibration table {table.name}", proto=self.folded)
            ranges = tpu_table_to_ranges(tpu_table, self.folded)
            plan = build_plan(self.folded, profile, ranges)
        else:
            if not self.data.calibration:
                raise CalibrationError(f"Suite {self.suite.name!r} has no calibration images",
                                       expected="[data] calibration or calibration_split",
                                       remedy="name a calibration list or folder in the suite file")
            total = len(self.data.calibration)
            qm = quantize_model(self.model, profile, self.data.calibration_batches, threads=self.threads,
                                progress=lambda phase, n: self._tick(f"calibrate ({phase})", n, total),
                                write_model=False)
            plan, ranges = qm.plan, dict(qm.ranges)
        qdq = write_qdq(self.folded, plan)
        self.timing["calibrate"] = time.perf_counter() - start
        return Quantized(plan, ranges, qdq, self._table_text(plan, ranges))

    def _table_text(self, plan: QuantPlan, ranges: dict[str, Any]) -> tuple[str, str] | None:
        """The toolchain's own table for the golden, when the profile (with its overrides) can be written as
        one; ``calibration.json`` always holds the scales, so a suite that overrides e.g. 16-bit activations
        on an ncnn profile loses only this convenience copy."""
        fmt = self.profile.table_format
        try:
            if fmt == "ncnn":
                return "calibration.table", format_ncnn_table(plan_to_ncnn_table(self.folded, plan))
            if fmt == "tpu-mlir" and ranges:
                return "calibration.cali", format_tpu_calibration_table(ranges_to_tpu_table(ranges, proto=self.folded))
        except HarnessError as exc:
            log.info("no %s table for suite %s: %s", fmt, self.suite.name, exc.what)
        return None

    @cached_property
    def scales(self) -> dict[str, dict[str, list[float]]]:
        """Activation scales per site (``tensor`` or ``tensor -> consumer``): what calibration-drift compares."""
        out: dict[str, dict[str, list[float]]] = {}
        for (tensor, consumer), tq in self.quantized.plan.activations.items():
            key = tensor if consumer == ALL_CONSUMERS else f"{tensor} -> {consumer}"
            out[key] = {"scale": np.atleast_1d(tq.scale).astype(float).tolist(),
                        "zero_point": np.atleast_1d(tq.zero_point).astype(float).tolist()}
        return dict(sorted(out.items()))

    # -- quantized vs fp32 on the probe images --------------------------------------------------
    def _dequantized_name(self, tensor: str) -> str | None:
        qdq = self.quantized.qdq
        if tensor in qdq.dequantized_tensors:
            return qdq.dequantized_tensors[tensor]
        return next((v for (t, _), v in sorted(qdq.edge_dequantized.items()) if t == tensor), None)

    def _sites(self) -> dict[tuple[str, str], str]:
        """Every activation quantisation site of the QDQ model -> its dequantised tensor."""
        qdq = self.quantized.qdq
        return {**{(t, ALL_CONSUMERS): d for t, d in qdq.dequantized_tensors.items()}, **qdq.edge_dequantized}

    @cached_property
    def quant_probe(self) -> QuantProbeRun:
        start = time.perf_counter()
        probe, qdq = self.probe, self.quantized.qdq
        local = {t.name: d for t in self.layers if (d := self._dequantized_name(t.name)) is not None}
        sites = self._sites()
        taps = list(dict.fromkeys([t.name for t in self.layers] + sorted({t for t, _ in sites} - {self.input_name})
                                  + sorted(set(local.values()) | set(sites.values()))))
        runner = mode_runner(qdq, "simulate", taps=taps, threads=self.threads, source=self.qdq_source)
        kernels = mode_session(qdq, "int8-kernels", threads=self.threads, source=self.qdq_source)
        comparison = LayerwiseComparison(self.layers, tolerances=self.suite.gates.layers,
                                         regions=layer_regions(self.folded, self.layers), folded=self._folding[1])
        out_names = list(probe.outputs)
        outputs: dict[str, list[np.ndarray]] = {}
        kernel_outputs: dict[str, list[np.ndarray]] = {}
        nonfinite = NonfiniteCounter()
        for i in range(probe.inputs.shape[0]):
            x = probe.inputs[i: i + 1]
            values = runner.run_views(x)
            nonfinite.update("quantized", "probe", str(self.data.probes[i].image_id),
                             {t.name: values[t.name] for t in self.layers})
            for t in self.layers:
                comparison.update_accumulated(t.name, probe.layers[t.name][i], values[t.name])
                if t.name in local:
                    comparison.update_local(t.name, values[t.name], values[local[t.name]])
            for (tensor, consumer), dq in sites.items():
                comparison.update_site(tensor, consumer, x if tensor == self.input_name else values[tensor],
                                       values[dq])
            for name in out_names:
                outputs.setdefault(name, []).append(np.array(values[name]))
            for name, value in zip(out_names, kernels.run(out_names, {self.input_name: x})):
                kernel_outputs.setdefault(name, []).append(value)
        self.timing["quant_probe"] = time.perf_counter() - start
        return QuantProbeRun(comparison.compute(), outputs, kernel_outputs, nonfinite)

    # -- task metrics on the evaluation split ---------------------------------------------------
    @cached_property
    def evaluation(self) -> Evaluation:
        if self.task is None:
            raise ConfigError(f"Suite {self.suite.name!r} (task = 'layers') has no task metrics",
                              expected="task = detection or classification")
        start = time.perf_counter()
        fp32 = self.fp32_session
        quant = mode_session(self.quantized.qdq, "simulate", threads=self.threads, source=self.qdq_source)
        names = [o.name for o in fp32.get_outputs()]
        samples = self.data.evaluation
        probes: list[dict[str, Any]] = []
        nonfinite = NonfiniteCounter()
        for index, (sample, (x, meta)) in enumerate(zip(samples, self.data.inputs(samples))):
            a = dict(zip(names, fp32.run(names, {self.input_name: x})))
            b = dict(zip(names, quant.run(names, {self.input_name: x})))
            image = str(sample.image_id)
            nonfinite.update("fp32", "evaluation", image, a).update("quantized", "evaluation", image, b)
            with blame_nonfinite_outputs(image, fp32=a, quantized=b):
                self.task.update(index, sample, a, b, meta)
            if index < self.data.probe_count:
                probes.append(self._probe_record(sample, a, b, meta))
            self._tick("evaluate", index + 1, len(samples))
        metrics = self.task.compute(self.suite.metrics.bootstrap)
        self.timing["evaluate"] = time.perf_counter() - start
        return Evaluation(metrics, probes, nonfinite)

    def _probe_record(self, sample: Any, a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                      meta: ImageMeta) -> dict[str, Any]:
        image = sample.read()
        h, w = image.shape[:2]
        factor = min(1.0, _THUMB_MAX / max(h, w))
        if factor < 1.0:
            image = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))),
                               interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        record = {"image": str(sample.image_id), "width": image.shape[1], "height": image.shape[0],
                  "jpeg_base64": base64.b64encode(jpeg.tobytes()).decode("ascii") if ok else None}
        for side, outputs in (("fp32", a), ("quantized", b)):
            dets = self.task.probe_record(outputs, meta)
            for d in dets:
                if "box" in d:
                    d["box"] = [v * factor for v in d["box"]]
            record[side] = dets
        return record

    @cached_property
    def metrics_provenance(self) -> dict[str, Any]:
        """What the task metrics depend on (model, suite sections, evaluation data), as metrics.json records it."""
        return provenance(self.suite, model_sha256=self.model.sha256, samples=self.data.evaluation)

    # -- golden ---------------------------------------------------------------------------------
    @cached_property
    def golden(self) -> GoldenHandle:
        """This suite's own golden: verified, or written when missing / on ``golden_update``."""
        path = golden_dir(self.suite, self.golden_root)
        with golden_lock(path):
            if self.golden_update or not exists(path):
                state = "updated" if exists(path) else "written"
                self._write_golden(path, overwrite=state == "updated")
                return GoldenHandle(path, state, GoldenStore.open(path))
            return GoldenHandle(path, "verified", GoldenStore.open(path))

    @cached_property
    def fp32_golden(self) -> GoldenHandle:
        """The golden holding the fp32 dumps: this suite's, or ``[suite] golden_from``'s (never written here)."""
        if self.suite.golden_from is None:
            return self.golden
        path = golden_dir(self.suite.replace(name=self.suite.golden_from), self.golden_root)
        if not exists(path):
            raise GoldenMissingError(f"Suite {self.suite.name!r} compares against the golden of suite "
                                     f"{self.suite.golden_from!r}, and {path} does not exist",
                                     expected="that suite's golden (its fp32 dumps)",
                                     remedy=f"run suite {self.suite.golden_from!r} first (it writes its golden)")
        with golden_lock(path):
            return GoldenHandle(path, "verified", GoldenStore.open(path))

    def _write_golden(self, path: Path, *, overwrite: bool) -> None:
        probe, quantized = self.probe, self.quantized
        evaluation = self.evaluation if self.task is not None else None
        extra = {"suite": self.suite.name, "profile": self.profile.name,
                 "probe_images": [str(s.image_id) for s in self.data.probes],
                 "layers_dtype": np.dtype(LAYER_DUMP_DTYPE).name}
        limit = self.suite.data.probe_layer_elements
        if limit is not None:
            extra["layer_sample_limit"] = limit
        if self.suite.golden_from is not None:
            extra["fp32_dumps_from"] = self.suite.golden_from
        with GoldenWriter(path, model_sha256=self.model.sha256, preprocessing=self.suite.preprocess.to_dict(),
                          num_images=probe.inputs.shape[0], overwrite=overwrite, extra=extra,
                          allow_nonfinite=self.suite.allow_nonfinite) as writer:
            if self.suite.golden_from is None:
                writer.write_input(self.input_name, probe.inputs)
                # Layers before outputs (each section has its own file): a NaN refusal names the first layer.
                for t in self.layers:
                    if t.name not in probe.outputs:
                        layer = sample_layer(stack(probe.layers[t.name]), limit)
                        writer.write_layer(t.name, layer.astype(LAYER_DUMP_DTYPE))
                for name, values in probe.outputs.items():
                    writer.write_output(name, stack(values))
                # Beside the dumps it explains: fp32-golden names the weights that changed.
                writer.add_json(WEIGHTS_FILE, weights_to_json(weight_records(self.model.proto)))
            writer.add_json("calibration.json", {"profile": self.profile.name, "scales": self.scales})
            if quantized.table_text is not None:
                writer.add_file(*quantized.table_text)
            if evaluation is not None:
                m = evaluation.metrics
                writer.add_json("metrics.json", {
                    "headline": m.headline, "fp32": m.fp32, "quantized": m.quantized, "n_images": m.n_images,
                    "provenance": self.metrics_provenance})
