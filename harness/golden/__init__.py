"""Golden dumps: ``manifest.json`` + raw Sophon-layout ``.dat`` files + checksummed side files."""

from harness.golden.importer import import_dumps, io_layout
from harness.golden.manifest import FORMAT_VERSION, LAYOUT, MANIFEST_NAME, SECTION_FILES, FileEntry, Manifest, TensorEntry
from harness.golden.store import GoldenStore, GoldenWriter

__all__ = [
    "FORMAT_VERSION",
    "LAYOUT",
    "MANIFEST_NAME",
    "SECTION_FILES",
    "FileEntry",
    "GoldenStore",
    "GoldenWriter",
    "Manifest",
    "TensorEntry",
    "import_dumps",
    "io_layout",
]
