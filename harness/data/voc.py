"""Pascal VOC detection datasets (VOCdevkit layout).

Layout: ``<root>/Annotations/<id>.xml``, ``<root>/JPEGImages/<id>.jpg``, ``<root>/ImageSets/Main/<split>.txt``
where ``root`` is e.g. ``VOCdevkit/VOC2007``. The order of samples is the order of the split file (the
devkit's order), or sorted ids when no split is given.

Boxes are kept exactly as written in the XML: 1-based inclusive pixel indices, ``box_convention="voc"``
(see :mod:`harness.data.boxes` for conversions). A box is valid when ``1 <= xmin <= xmax <= width`` (same for
y): touching the border is normal in VOC, anything beyond it, or a negative size, is an annotation error.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.data.dataset import BoxAnnotation, Dataset, Sample, collect
from harness.errors import AnnotationError, DataError, ImageReadError

#: The 20 VOC classes in the devkit's (alphabetical) order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass(frozen=True)
class _VocObject:
    name: str
    box: tuple[float, float, float, float]
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class _VocRecord:
    image_id: str
    image_path: Path
    size: tuple[int, int]
    objects: tuple[_VocObject, ...]


class VOCDataset(Dataset[BoxAnnotation]):
    """VOC images with their boxes; ``labels`` index ``class_names``.

    ``classes`` fixes the class list (and its order); without it the names found in the kept annotations are
    used, sorted. An object whose class is not in ``classes`` is an error, unless ``ignore_unknown_classes``
    (e.g. evaluating a face-only model on a VOC-format set with extra classes), which drops the object.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        split: str | None = "test",
        classes: Sequence[str] | None = None,
        skip_bad: bool = False,
        image_ext: str = ".jpg",
        ignore_unknown_classes: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        for sub in ("Annotations", "JPEGImages"):
            if not (self.root / sub).is_dir():
                raise DataError(
                    f"{self.root} has no {sub} folder",
                    expected="a VOC root such as VOCdevkit/VOC2007 holding Annotations, JPEGImages, ImageSets/Main",
                )
        ids = self._read_ids(split)
        image_ext = image_ext if image_ext.startswith(".") else "." + image_ext
        records = collect(
            ids,
            lambda i: self._parse(i, image_ext),  # type: ignore[arg-type,return-value]
            skip_bad=skip_bad,
            skipped=self.skipped,
            kind=f"VOC {self.root.name}",
        )
        if classes is None:
            names = sorted({obj.name for rec in records for obj in rec.target.objects})  # type: ignore[attr-defined]
            self.class_names = tuple(names)
        else:
            self.class_names = tuple(classes)
        index = {name: i for i, name in enumerate(self.class_names)}
        self.samples = collect(
            [rec.target for rec in records],  # type: ignore[misc]
            lambda rec: self._to_sample(rec, index, ignore_unknown_classes),
            skip_bad=skip_bad,
            skipped=self.skipped,
            kind=f"VOC {self.root.name}",
        )

    def _read_ids(self, split: str | None) -> list[str]:
        if split is None:
            return sorted(p.stem for p in (self.root / "Annotations").glob("*.xml"))
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(
                f"VOC split file {split_file} does not exist",
                expected="ImageSets/Main/<split>.txt with one image id per line",
                remedy="pass split=None to use every annotation, or name an existing split",
            )
        # Class-specific split files carry a second column (1 / -1 / 0); the id is always the first token.
        return [line.split()[0] for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _parse(self, image_id: str, image_ext: str) -> Sample[_VocRecord]:
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise AnnotationError(f"VOC annotation {xml_path} does not exist (id {image_id!r} is in the split)")
        try:
            tree = ET.parse(xml_path)
        except ET.ParseError as exc:
            raise AnnotationError(f"VOC annotation {xml_path} is not well-formed XML: {exc}") from None
        node = tree.getroot()
        size = (_int_field(node, "size/width", xml_path), _int_field(node, "size/height", xml_path))
        objects = []
        for k, obj in enumerate(node.findall("object")):
            where = f"object {k}"
            name = obj.findtext("name")
            if name is None or not name.strip():
                raise AnnotationError(f"VOC annotation {xml_path}: {where} has no field 'name'")
            box = tuple(
                _float_field(obj, f"bndbox/{tag}", xml_path, where) for tag in ("xmin", "ymin", "xmax", "ymax")
            )
            _check_box(box, size, xml_path, f"{where} ({name.strip()})")  # type: ignore[arg-type]
            objects.append(
                _VocObject(
                    name=name.strip(),
                    box=box,  # type: ignore[arg-type]
                    difficult=_flag(obj, "difficult", xml_path, where),
                    truncated=_flag(obj, "truncated", xml_path, where),
                )
            )
        image_path = self.root / "JPEGImages" / f"{image_id}{image_ext}"
        if not image_path.is_file():
            raise ImageReadError(f"VOC image {image_path} does not exist (annotated in {xml_path})")
        record = _VocRecord(image_id=image_id, image_path=image_path, size=size, objects=tuple(objects))
        return Sample(image_path=image_path, image_id=image_id, target=record)

    def _to_sample(self, rec: _VocRecord, index: dict[str, int], ignore_unknown: bool) -> Sample[BoxAnnotation]:
        kept = []
        for obj in rec.objects:
            if obj.name in index:
                kept.append(obj)
            elif not ignore_unknown:
                raise AnnotationError(
                    f"VOC annotation for {rec.image_id!r} has an object of class {obj.name!r}",
                    expected=f"one of the dataset classes {list(self.class_names)}",
                    remedy="add the class, or pass ignore_unknown_classes=True to drop such objects",
                )
        target = BoxAnnotation.build(
            boxes=[o.box for o in kept],
            labels=[index[o.name] for o in kept],
            difficult=[o.difficult for o in kept],
            truncated=[o.truncated for o in kept],
            image_size=rec.size,
            box_convention="voc",
        )
        return Sample(image_path=rec.image_path, image_id=rec.image_id, target=target)


def _float_field(node: ET.Element, path: str, xml_path: Path, where: str) -> float:
    text = node.findtext(path)
    if text is None or not text.strip():
        raise AnnotationError(f"VOC annotation {xml_path}: {where} has no field '{path}'")
    try:
        return float(text)
    except ValueError:
        raise AnnotationError(f"VOC annotation {xml_path}: {where} field '{path}' = {text!r} is not a number") from None


def _int_field(node: ET.Element, path: str, xml_path: Path) -> int:
    value = _float_field(node, path, xml_path, "the image")
    if value <= 0 or value != int(value):
        raise AnnotationError(f"VOC annotation {xml_path}: field '{path}' = {value}", expected="a positive integer")
    return int(value)


def _flag(node: ET.Element, tag: str, xml_path: Path, where: str) -> bool:
    text = node.findtext(tag)
    if text is None or not text.strip():
        return False  # VOC2012 leaves difficult/truncated out for some objects; the devkit reads that as 0
    if text.strip() not in ("0", "1"):
        raise AnnotationError(f"VOC annotation {xml_path}: {where} field '{tag}' = {text!r}", expected="0 or 1")
    return text.strip() == "1"


def _check_box(box: tuple[float, float, float, float], size: tuple[int, int], xml_path: Path, where: str) -> None:
    xmin, ymin, xmax, ymax = box
    if xmax < xmin or ymax < ymin:
        raise AnnotationError(
            f"VOC annotation {xml_path}: {where} field 'bndbox' {box} has a negative size",
            expected="xmin <= xmax and ymin <= ymax",
        )
    width, height = size
    if xmin < 1 or ymin < 1 or xmax > width or ymax > height:
        raise AnnotationError(
            f"VOC annotation {xml_path}: {where} field 'bndbox' {box} lies outside the {width}x{height} image",
            expected=f"1-based pixel indices with 1 <= x <= {width} and 1 <= y <= {height}",
        )
