"""read_image: the deploy (cv2.imread IMREAD_COLOR) behaviour, pinned down case by case."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from harness.data.images import decode_image, list_images, read_image
from harness.errors import ImageReadError


def _write(path, image, ext=".png", params=()):
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    """A lossless-ish JPEG with a minimal EXIF APP1 segment holding only the Orientation tag."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    data = buf.tobytes()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def test_color_png_round_trips_exactly(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    out = read_image(_write(tmp_path / "a.png", image))
    assert out.dtype == np.uint8 and out.flags.c_contiguous and np.array_equal(out, image)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10)
    out = read_image(_write(tmp_path / "g.png", gray))
    assert out.shape == (6, 10, 3)
    for c in range(3):
        assert np.array_equal(out[:, :, c], gray)


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0  # fully transparent
    out = read_image(_write(tmp_path / "t.png", bgra))
    assert out.shape == (4, 5, 3) and np.array_equal(out, bgra[..., :3])


def test_16bit_png_is_truncated_with_shift_by_8(tmp_path):
    values = np.array([[0, 255, 256, 257, 32767, 32768, 65280, 65535]], np.uint16)
    image16 = np.repeat(values[..., None], 3, axis=2)
    out = read_image(_write(tmp_path / "d.png", image16))
    assert out[0, :, 0].tolist() == (values[0] >> 8).tolist() == [0, 0, 1, 1, 127, 128, 255, 255]


@pytest.mark.parametrize("orientation, expected_shape, marker", [(1, (20, 40), (0, 0)), (6, (40, 20), (0, 19)), (3, (20, 40), (19, 39))])
def test_exif_orientation_is_applied_exactly_once(tmp_path, orientation, expected_shape, marker):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:5, :5] = 255  # white block in the stored top-left corner
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(_jpeg_with_orientation(image, orientation))
    out = read_image(path)
    assert out.shape[:2] == expected_shape
    # Orientation 6 = rotate 90 degrees clockwise: stored top-left lands top-right. Applying it twice
    # would give a 180-degree turn (block bottom-right, original shape), which this catches.
    assert out[marker].min() > 200
    assert np.array_equal(out, cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_non_ascii_path(tmp_path):
    folder = tmp_path / "données_画像"
    folder.mkdir()
    image = np.full((3, 4, 3), 77, np.uint8)
    out = read_image(_write(folder / "чай é.png", image))
    assert np.array_equal(out, image)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageReadError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")


def test_directory_is_refused(tmp_path):
    with pytest.raises(ImageReadError, match="not a file"):
        read_image(tmp_path)


@pytest.mark.parametrize("content", [b"", b"version https://git-lfs.github.com/spec/v1\n", b"<html>404</html>"])
def test_undecodable_files_raise_image_read_error_naming_the_path(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(path)


def test_truncated_jpeg_header_is_refused():
    image = np.zeros((32, 32, 3), np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    with pytest.raises(ImageReadError):
        decode_image(data[:20])


def test_list_images_sorted_filtered_and_hidden_skipped(tmp_path):
    for name in ["b.JPG", "a.png", "c.txt", "._a.jpg", "z.jpeg", "10.bmp", "9.bmp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["10.bmp", "9.bmp", "a.png", "b.JPG", "z.jpeg"]
    recursive = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert recursive == ["10.bmp", "9.bmp", "a.png", "b.JPG", "sub/d.png", "z.jpeg"]
    assert [p.name for p in list_images(tmp_path, extensions=("png",))] == ["a.png"]
