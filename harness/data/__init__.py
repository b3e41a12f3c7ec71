"""Data: preprocessing spec, image reading, and VOC / COCO / classification / image-list datasets."""

from harness.data.classification import ClassFolderDataset, ClassListDataset
from harness.data.coco import COCODataset
from harness.data.dataset import BoxAnnotation, Dataset, Sample
from harness.data.geometry import ImageMeta
from harness.data.images import IMAGE_EXTENSIONS, decode_image, list_images, read_image
from harness.data.imagelist import ImageListDataset
from harness.data.preprocess import PreprocessSpec, preprocess, preprocess_batch
from harness.data.voc import VOC_CLASSES, VOCDataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "VOC_CLASSES",
    "BoxAnnotation",
    "COCODataset",
    "ClassFolderDataset",
    "ClassListDataset",
    "Dataset",
    "ImageListDataset",
    "ImageMeta",
    "PreprocessSpec",
    "Sample",
    "VOCDataset",
    "decode_image",
    "list_images",
    "preprocess",
    "preprocess_batch",
    "read_image",
]
