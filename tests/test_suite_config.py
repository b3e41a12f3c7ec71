"""Suite files: strict keys and types, paths relative to the file, names, immutability, round trip."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.suite import SuiteUnavailable, discover_suites, load_suite, suite_from_dict

DETECTOR = """
[suite]
task = "detection"
description = "SSD on VOC"

[model]
path = "models/ssd.onnx"
reference = "/abs/caffe_twin.onnx"

[preprocess]
size = [300, 300]
mean = [104, 117, 123]
norm = 0.017

[data]
format = "voc"
root = "../data/VOC2007"
split = "test"
calibration_split = "trainval"
max_images = 50

[postprocess]
kind = "ssd"
score_threshold = 0.01
[[postprocess.priors]]
min_sizes = [30]
max_sizes = [60]
aspect_ratios = [2]
stride = 8
[[postprocess.priors]]
min_sizes = [60]
aspect_ratios = [2, 3]
feature_size = [19, 19]
step = [16, 16]

[quant]
profile = "ncnn-int8"
float_layers = ["conv1"]

[metrics]
ap_method = "area"
[metrics.bootstrap]
n_resamples = 200

[gates]
preset = "ssd300"
layer_sqnr_db_min = 10
[gates.layer_overrides]
"conv_dw_*" = { cosine_min = 0.95 }
[gates.metrics]
map = { drop_max = 0.02 }
"""

CLASSIFIER = """
[model]
path = "mobilenet.onnx"
[preprocess]
size = [224, 224]
resize = "short_side"
short_side = 256
channel_order = "rgb"
mean = [123.675, 116.28, 103.53]
std = [58.395, 57.12, 57.375]
[data]
format = "classification_list"
list = "val.txt"
calibration = "calib/"
[postprocess]
kind = "softmax"
[quant]
profile = "tflite-int8"
[metrics]
topk = [1, 5]
[gates.metrics]
top1 = { drop_max_rel = 0.05 }
[suite]
task = "classification"
"""


def write(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_detector_loads_with_resolved_paths(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path / "suites", DETECTOR, "det.toml"))
    assert suite.name == "det"  # default: the file stem
    assert suite.model.path == tmp_path / "suites" / "models" / "ssd.onnx"
    assert suite.model.reference == Path("/abs/caffe_twin.onnx")
    assert suite.data.root == tmp_path / "data" / "VOC2007"  # '..' normalised, relative to the file not the cwd
    assert suite.data.calibration_split == "trainval" and suite.data.probe_images == 2
    assert len(suite.postprocess.priors) == 2 and suite.postprocess.priors[1].step == (16.0, 16.0)
    assert suite.quant.float_layers == ("conv1",)
    assert suite.metrics.ap_method == "area" and suite.metrics.bootstrap.n_resamples == 200
    assert suite.gates.bound("layer_cosine_min").value == 0.98
    assert suite.metric_names == ("map",)


def test_relative_paths_do_not_depend_on_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "suites", DETECTOR)
    monkeypatch.chdir(tmp_path)
    a = load_suite(Path("suites/suite.toml"))
    monkeypatch.chdir(tmp_path / "suites")
    b = load_suite(Path("suite.toml"))
    assert a == b and a.model.path == path.parent / "models" / "ssd.onnx"


def test_environment_variables_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``${NAME}`` in [model]/[data]/[quant] paths: expanded when set; unset, the suite is unavailable (skipped
    by the plugin and `quant-harness run`), not broken, and the message names the variable."""
    text = edit(DETECTOR, 'path = "models/ssd.onnx"', 'path = "${QH_MODELS}/ssd.onnx"')
    path = write(tmp_path / "suites", text)
    monkeypatch.setenv("QH_MODELS", str(tmp_path / "far"))
    assert load_suite(path).model.path == tmp_path / "far" / "ssd.onnx"
    monkeypatch.setenv("QH_MODELS", "")
    with pytest.raises(SuiteUnavailable, match=r"needs the environment variable QH_MODELS, which is not set") as info:
        load_suite(path)
    assert info.value.name == "suite" and info.value.variables == ["QH_MODELS"]
    assert isinstance(info.value, ConfigError)


def test_classifier_loads(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, CLASSIFIER))
    assert suite.data.list == tmp_path / "val.txt"
    assert suite.metric_names == ("top1", "top5", "mean_class_accuracy")
    assert suite.gates.metrics["top1"].drop_max_rel.value == 0.05
    assert suite.quant.resolve().name == "tflite-int8"


@pytest.mark.parametrize("text", [DETECTOR, CLASSIFIER])
def test_round_trip(tmp_path: Path, text: str) -> None:
    suite = load_suite(write(tmp_path / "s", text))
    data = suite.to_dict()
    assert suite_from_dict(data, path=suite.path) == suite
    assert data["model"]["path"] in ("models/ssd.onnx", "mobilenet.onnx")  # portable, not absolute


def test_immutable_and_replace(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, DETECTOR))
    with pytest.raises(dataclasses.FrozenInstanceError):
        suite.data.max_images = 3  # type: ignore[misc]
    small = suite.replace(data=suite.data.replace(max_images=3))
    assert small.data.max_images == 3 and suite.data.max_images == 50


@pytest.mark.parametrize(
    ("old", "new", "key", "valid"),
    [
        ("[model]", "[modle]\npath = 'x'\n[model]", "modle", "suite, model, preprocess"),
        ('description = "SSD on VOC"', 'descripton = "x"', "suite.descripton", "name, task, description"),
        ('path = "models/ssd.onnx"', 'path = "m.onnx"\nweights = "w"', "model.weights", "path, reference"),
        ("max_images = 50", "max_image = 50", "data.max_image", "probe_images, max_images"),
        ("max_images = 50", "annotations = 'a.json'", "data.annotations", "calibration_split"),
        ('kind = "ssd"', 'kind = "ssd"\nnms = 0.4', "postprocess.nms", "iou_threshold"),
        ("stride = 8", "stride = 8\nsteps = 8", "postprocess.priors[0].steps", "min_sizes, max_sizes"),
        ('ap_method = "area"', 'apmethod = "area"', "metrics.apmethod", "ap_method"),
        ("n_resamples = 200", "resamples = 200", "metrics.bootstrap.resamples", "n_resamples, confidence, seed"),
        ("layer_sqnr_db_min = 10", "layer_cosin_min = 0.9", "gates.layer_cosin_min", "layer_cosine_min"),
        ("{ cosine_min = 0.95 }", "{ cos_min = 0.95 }", "cos_min", "cosine_min, euclid_min, sqnr_db_min, max_abs_max, skip"),
        ("map = { drop_max = 0.02 }", "map50 = { drop_max = 0.02 }", "gates.metrics.map50", "map"),
        ("map = { drop_max = 0.02 }", "map = { drop_maximum = 0.02 }", "drop_maximum", "drop_max, drop_max_rel"),
        ('float_layers = ["conv1"]', 'float_layer = ["conv1"]', "quant.float_layer", "float_layers"),
    ],
)
def test_unknown_keys_name_file_key_and_valid_keys(tmp_path: Path, old: str, new: str, key: str, valid: str) -> None:
    path = write(tmp_path, edit(DETECTOR, old, new))
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert str(path) in message and key in message and valid in message


def test_unknown_preprocess_key_comes_from_preprocess_spec(tmp_path: Path) -> None:
    path = write(tmp_path, edit(DETECTOR, "norm = 0.017", "nrom = 0.017"))
    with pytest.raises(ConfigError, match="nrom") as info:
        load_suite(path)
    assert str(path) in str(info.value) and "data_scale" in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("max_images = 50", 'max_images = "50"', "an integer"),
        ("max_images = 50", "max_images = 5.5", "an integer"),
        ("max_images = 50", "max_images = 0", "an integer >= 1"),
        ("max_images = 50", "skip_bad = 1", "a boolean"),
        ('split = "test"', "split = 2007", "a string"),
        ("score_threshold = 0.01", "score_threshold = 1.5", "a number in [0, 1]"),
        ("score_threshold = 0.01", 'score_threshold = "low"', "a number"),
        ("min_sizes = [30]", "min_sizes = 30", "an array of numbers"),
        ('kind = "ssd"', 'kind = "yolo"', "'ssd', 'ultraface'"),
        ('format = "voc"', 'format = "imagenet"', "'voc', 'coco', 'images'"),
        ("layer_sqnr_db_min = 10", "layer_sqnr_db_min = true", "a number"),
        ("layer_sqnr_db_min = 10", "layer_cosine_min = 1.2", "[0, 1]"),
        ('profile = "ncnn-int8"', 'profile = "ncnn"', "ncnn-int8"),
        ('float_layers = ["conv1"]', "activation_bits = 'eight'", "[quant]"),
        ("max_images = 50", "max_images = = 50", "not valid TOML"),
    ],
)
def test_wrong_types_say_what_was_expected(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = write(tmp_path, edit(DETECTOR, old, new))
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert expected in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("name", ["ok_name", "v1.2-int8", "A"])
def test_valid_names(tmp_path: Path, name: str) -> None:
    suite = load_suite(write(tmp_path, edit(DETECTOR, "[suite]", f'[suite]\nname = "{name}"')))
    assert suite.name == name


@pytest.mark.parametrize("name", ["has space", "../escape", "a/b", ".hidden", "..", "", "ü"])
def test_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="letters, digits"):
        load_suite(write(tmp_path, edit(DETECTOR, "[suite]", f'[suite]\nname = "{name}"')))


def test_file_stem_must_be_a_valid_name_without_explicit_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file name"):
        load_suite(write(tmp_path, DETECTOR, "my suite.toml"))


def test_expected_failure_needs_a_known_reason(tmp_path: Path) -> None:
    ok = load_suite(write(tmp_path, edit(DETECTOR, "[suite]", '[suite]\nexpect = "fail"\nexpect_reason = "layerwise"')))
    assert (ok.expect, ok.expect_reason) == ("fail", "layerwise")
    with pytest.raises(ConfigError, match="expect_reason"):
        load_suite(write(tmp_path, edit(DETECTOR, "[suite]", '[suite]\nexpect = "fail"')))
    with pytest.raises(ConfigError, match="input-parity"):
        load_suite(write(tmp_path, edit(DETECTOR, "[suite]", '[suite]\nexpect = "fail"\nexpect_reason = "speed"')))


def test_expect_also_names_other_checks_of_a_must_fail_suite(tmp_path: Path) -> None:
    head = '[suite]\nexpect = "fail"\nexpect_reason = "input-parity"\n'
    ok = load_suite(write(tmp_path, edit(DETECTOR, "[suite]", head + 'expect_also = ["fp32-golden", "metric"]')))
    assert ok.expected_failures == ("input-parity", "fp32-golden", "metric")
    assert suite_from_dict(ok.to_dict(), path=ok.path) == ok
    for bad, match in (('expect_also = ["speed"]', "not a check name"),
                       ('expect_also = ["input-parity"]', "expect_reason already"),
                       ('expect_also = ["metric", "metric"]', "listed twice"),
                       ('expect_also = "metric"', "an array of strings")):
        with pytest.raises(ConfigError, match=match):
            load_suite(write(tmp_path, edit(DETECTOR, "[suite]", head + bad)))
    with pytest.raises(ConfigError, match="expect_also only with expect = 'fail'"):
        load_suite(write(tmp_path, edit(DETECTOR, "[suite]", '[suite]\nexpect_also = ["metric"]')))


def test_format_specific_requirements(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.annotations"):
        load_suite(write(tmp_path, edit(DETECTOR, 'format = "voc"', 'format = "coco"').replace(
            'split = "test"\ncalibration_split = "trainval"', 'calibration = "calib.txt"')))
    with pytest.raises(ConfigError, match="calibration"):
        load_suite(write(tmp_path, edit(DETECTOR, 'calibration_split = "trainval"', "")))
    images = edit(DETECTOR, 'format = "voc"', 'format = "images"').replace(
        'split = "test"\ncalibration_split = "trainval"', 'calibration = "calib"')
    with pytest.raises(ConfigError, match="pseudo_ground_truth"):
        load_suite(write(tmp_path, images))
    suite = load_suite(write(tmp_path, edit(images, 'ap_method = "area"', "pseudo_ground_truth = true")))
    assert suite.metrics.pseudo_ground_truth and suite.data.calibration == tmp_path / "calib"


def test_layers_suite_has_no_task_sections(tmp_path: Path) -> None:
    text = edit(DETECTOR, 'task = "detection"', 'task = "layers"')
    with pytest.raises(ConfigError, match="postprocess"):
        load_suite(write(tmp_path, text))
    text = text.split("[postprocess]")[0] + '[quant]\nprofile = "ort-qdq"\n'
    suite = load_suite(write(tmp_path, text))
    assert suite.postprocess is None and suite.metrics is None and suite.metric_names == ()
    assert suite_from_dict(suite.to_dict(), path=suite.path) == suite


def test_discover_suites_sorted_and_not_recursive(tmp_path: Path) -> None:
    for name in ("b.toml", "a.toml", "notes.txt", "assets/x.toml"):
        write(tmp_path / "suites", "", name)
    extra = write(tmp_path, "", "z.toml")
    found = discover_suites([tmp_path / "suites", extra, tmp_path / "suites" / "a.toml"])
    assert [p.name for p in found] == ["a.toml", "b.toml", "z.toml"]
    with pytest.raises(ConfigError, match="does not exist"):
        discover_suites([tmp_path / "missing"])


def test_examples_in_docs_load(tmp_path: Path) -> None:
    import re

    doc = Path(__file__).resolve().parents[1] / "docs" / "suites.md"
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        suite = load_suite(write(tmp_path, block, f"example{i}.toml"))
        assert suite_from_dict(suite.to_dict(), path=suite.path) == suite
