"""Classification datasets: a folder per class, or a list file of ``path label`` lines.

Target of each sample: the ``int`` class index. Orders are deterministic: class folders sorted by name
(torchvision ImageFolder order, so labels agree with models trained on it), files within a class sorted;
list files keep their line order (the order the author chose, e.g. ImageNet val order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from harness.data.dataset import Dataset, Sample, collect
from harness.data.images import IMAGE_EXTENSIONS, list_images
from harness.errors import AnnotationError, DataError, ImageReadError


class ClassFolderDataset(Dataset[int]):
    """``root/<class name>/<image>``; class names are the sub-folder names, sorted (or given by ``classes``,
    which then fixes the label order and restricts the folders read)."""

    def __init__(
        self,
        root: str | Path,
        *,
        classes: Sequence[str] | None = None,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"Class folder root {self.root} does not exist or is not a directory")
        if classes is None:
            names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        else:
            names = list(classes)
            missing = [n for n in names if not (self.root / n).is_dir()]
            if missing:
                raise DataError(f"Class folder(s) {missing} missing under {self.root}")
        if not names:
            raise DataError(f"{self.root} has no class sub-folders", expected="one sub-folder per class")
        self.class_names = tuple(names)
        exts = tuple(extensions)
        self.samples = tuple(
            Sample(image_path=p, image_id=f"{name}/{p.relative_to(self.root / name).as_posix()}", target=label)
            for label, name in enumerate(names)
            for p in list_images(self.root / name, extensions=exts, recursive=True)
        )


class ClassListDataset(Dataset[int]):
    """A list file with one ``<path> <label>`` per line (caffe / ImageNet val.txt style).

    Paths may contain spaces (the label is the last token). Relative paths resolve against ``root`` when
    given, else against the list file's folder. Blank lines and ``#`` comments are ignored.
    ``class_names`` is ``classes`` when given (labels must index it), else ``str(label)`` for 0..max label.
    """

    def __init__(
        self,
        list_file: str | Path,
        *,
        root: str | Path | None = None,
        classes: Sequence[str] | None = None,
        skip_bad: bool = False,
    ) -> None:
        super().__init__()
        self.list_file = Path(list_file)
        if not self.list_file.is_file():
            raise DataError(f"Classification list file {self.list_file} does not exist")
        base = Path(root) if root is not None else self.list_file.parent
        lines = [
            (n, line.strip())
            for n, line in enumerate(self.list_file.read_text(encoding="utf-8").splitlines(), start=1)
            if line.strip() and not line.strip().startswith("#")
        ]
        n_classes = len(classes) if classes is not None else None

        def build(item: tuple[int, str]) -> Sample[int]:
            number, line = item
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise AnnotationError(
                    f"{self.list_file} line {number}: {line!r} has no integer label",
                    expected="'<image path> <integer label>'",
                )
            label = int(parts[1])
            if label < 0 or (n_classes is not None and label >= n_classes):
                raise AnnotationError(
                    f"{self.list_file} line {number}: label {label} is out of range",
                    expected=f"0 <= label < {n_classes if n_classes is not None else 'number of classes'}",
                )
            path = Path(parts[0])
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise ImageReadError(f"{self.list_file} line {number}: image {path} does not exist")
            return Sample(image_path=path, image_id=parts[0], target=label)

        self.samples = collect(lines, build, skip_bad=skip_bad, skipped=self.skipped, kind=self.list_file.name)
        if classes is not None:
            self.class_names = tuple(classes)
        else:
            top = max((s.target for s in self.samples), default=-1)
            self.class_names = tuple(str(i) for i in range(top + 1))
