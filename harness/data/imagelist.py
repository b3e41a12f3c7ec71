"""Unlabelled image sets for calibration: a list file or a folder.

Mirrors the toolchains' own inputs so a suite can point at the same files: nnie_mapper's ``imageList.txt``
(one path per line; ``${NAME}`` environment references are expanded, see :mod:`harness.envvars`) and
caffe-int8-convert-tools / ncnn2table's ``--images`` folder. Relative paths in a list
file resolve against the list file's folder (not the current directory, which differs between a developer's
shell and CI). Folder listings are sorted (see :func:`harness.data.images.list_images`) so calibration sees
the same images in the same order on every machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from harness.data.dataset import Dataset, Sample, collect
from harness.data.images import IMAGE_EXTENSIONS, is_image_file, list_images
from harness.envvars import expand_variables, unset_variables
from harness.errors import DataError, ImageReadError


class ImageListDataset(Dataset[None]):
    """Images named by ``source``: a folder (filtered by ``extensions``; ``recursive`` to descend) or a text
    file with one image path per line (blank lines and ``#`` comments ignored; ``extensions`` not applied,
    the author listed the files on purpose). ``image_id`` is the path as listed (or relative to the folder)."""

    def __init__(
        self,
        source: str | Path,
        *,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        recursive: bool = False,
        skip_bad: bool = False,
        limit: int | None = None,
    ) -> None:
        super().__init__()
        self.source = Path(source)
        if self.source.is_dir():
            paths = list_images(self.source, extensions=tuple(extensions), recursive=recursive)
            samples = [Sample(image_path=p, image_id=p.relative_to(self.source).as_posix(), target=None) for p in paths]
            self.samples = tuple(samples)
        elif self.source.is_file():
            if is_image_file(self.source):
                raise DataError(
                    f"{self.source} is an image, not a list of images",
                    expected="a folder of images or a text file with one image path per line",
                )
            self.samples = self._from_list(skip_bad)
        else:
            raise DataError(f"Image list {self.source} does not exist", expected="a folder or a list file")
        if limit is not None:
            # The first N of a fixed order, so a quick run calibrates on a prefix of the full run's images.
            self.samples = self.samples[:limit]
        if not self.samples:
            raise DataError(f"Image list {self.source} yields no images", remedy="check the path and the extensions")

    def _from_list(self, skip_bad: bool) -> tuple[Sample[None], ...]:
        base = self.source.parent
        entries = [
            (n, line.strip())
            for n, line in enumerate(self.source.read_text(encoding="utf-8-sig").splitlines(), start=1)
            if line.strip() and not line.strip().startswith("#")
        ]

        def build(item: tuple[int, str]) -> Sample[None]:
            number, text = item
            if missing := unset_variables(text):
                raise DataError(f"{self.source} line {number} uses the environment variable {missing[0]}, "
                                "which is not set", expected=f"{missing[0]} to name a folder",
                                remedy=f"export {missing[0]}=<folder>, or list the image's path directly")
            path = Path(expand_variables(text))
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                raise ImageReadError(f"{self.source} line {number}: image {path} does not exist")
            return Sample(image_path=path, image_id=text, target=None)

        return collect(entries, build, skip_bad=skip_bad, skipped=self.skipped, kind=self.source.name)
