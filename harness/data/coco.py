"""COCO detection datasets (instances json + image folder).

Samples are ordered by image id (COCO's json order is arbitrary). Labels are contiguous indices into
``class_names``, which follow the categories sorted by category id; ``category_ids[label]`` gives the COCO
id back for writing results json. Boxes become continuous corners ``(x, y, x + w, y + h)``
(``box_convention="xyxy"``). Images without annotations are kept with zero boxes, as pycocotools does.

COCO boxes are floats produced from polygons, so a box may stick out of the image by a fraction of a pixel;
up to ``_EDGE_TOLERANCE`` pixels beyond the border is accepted, more is an annotation error.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.data.dataset import BoxAnnotation, Dataset, Sample, collect
from harness.errors import AnnotationError, DataError, ImageReadError

_EDGE_TOLERANCE = 1.0


class COCODataset(Dataset[BoxAnnotation]):
    """COCO images and boxes from ``annotation_file``; images are ``image_dir / file_name``."""

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        *,
        skip_bad: bool = False,
    ) -> None:
        super().__init__()
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        data = self._load()
        categories = sorted(self._require_list(data, "categories"), key=lambda c: self._field(c, "id", "category"))
        self.category_ids: tuple[int, ...] = tuple(int(c["id"]) for c in categories)
        self.class_names = tuple(str(self._field(c, "name", f"category {c['id']}")) for c in categories)
        self._label_of = {cid: i for i, cid in enumerate(self.category_ids)}

        by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for ann in self._require_list(data, "annotations"):
            by_image[self._field(ann, "image_id", "annotation")].append(ann)
        images = self._require_list(data, "images")
        images = sorted(images, key=lambda im: self._field(im, "id", "image"))
        self.samples = collect(
            images,
            lambda im: self._to_sample(im, by_image.get(im["id"], [])),
            skip_bad=skip_bad,
            skipped=self.skipped,
            kind=f"COCO {self.annotation_file.name}",
        )

    def _load(self) -> dict[str, Any]:
        if not self.annotation_file.is_file():
            raise DataError(f"COCO annotation file {self.annotation_file} does not exist")
        try:
            data = json.loads(self.annotation_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AnnotationError(f"COCO annotation file {self.annotation_file} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise AnnotationError(f"COCO annotation file {self.annotation_file} holds a {type(data).__name__}",
                                  expected="a JSON object with images, annotations and categories")
        return data

    def _require_list(self, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = data.get(key)
        if not isinstance(value, list):
            raise AnnotationError(f"COCO annotation file {self.annotation_file} has no list field '{key}'")
        return value

    def _field(self, obj: Any, key: str, where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise AnnotationError(f"COCO annotation file {self.annotation_file}: {where} has no field '{key}'")
        return obj[key]

    def _to_sample(self, image: dict[str, Any], anns: list[dict[str, Any]]) -> Sample[BoxAnnotation]:
        image_id = image["id"]
        where = f"image {image_id}"
        file_name = str(self._field(image, "file_name", where))
        size = (int(self._field(image, "width", where)), int(self._field(image, "height", where)))
        boxes, labels, crowd = [], [], []
        for ann in anns:
            ann_where = f"annotation {ann.get('id', '?')} of image {image_id}"
            bbox = self._field(ann, "bbox", ann_where)
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
                raise AnnotationError(
                    f"COCO annotation file {self.annotation_file}: {ann_where} field 'bbox' = {bbox!r}",
                    expected="[x, y, width, height] numbers",
                )
            x, y, w, h = (float(v) for v in bbox)
            if w < 0 or h < 0:
                raise AnnotationError(
                    f"COCO annotation file {self.annotation_file}: {ann_where} field 'bbox' {bbox} has a negative size"
                )
            if x < -_EDGE_TOLERANCE or y < -_EDGE_TOLERANCE or x + w > size[0] + _EDGE_TOLERANCE or (
                y + h > size[1] + _EDGE_TOLERANCE
            ):
                raise AnnotationError(
                    f"COCO annotation file {self.annotation_file}: {ann_where} field 'bbox' {bbox} lies outside "
                    f"the {size[0]}x{size[1]} image"
                )
            category = self._field(ann, "category_id", ann_where)
            if category not in self._label_of:
                raise AnnotationError(
                    f"COCO annotation file {self.annotation_file}: {ann_where} field 'category_id' = {category!r} "
                    "is not a listed category"
                )
            boxes.append((x, y, x + w, y + h))
            labels.append(self._label_of[category])
            crowd.append(bool(ann.get("iscrowd", 0)))
        path = self.image_dir / file_name
        if not path.is_file():
            raise ImageReadError(f"COCO image {path} does not exist (image {image_id} in {self.annotation_file})")
        target = BoxAnnotation.build(
            boxes=boxes, labels=labels, crowd=crowd, image_size=size, box_convention="xyxy"
        )
        return Sample(image_path=path, image_id=str(image_id), target=target)
