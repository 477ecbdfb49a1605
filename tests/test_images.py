"""Image files of any size and mode become 32x32 RGB uint8 as the training images are, with a note
for each change; files that are not images are refused with one line naming them."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_images
from resnet_ocp.images import UnreadableImage, image_files, load_image


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    """A 32x32 RGB training-style image (a class colour with noise), uint8 [32, 32, 3]."""
    return make_images(np.array([3]), seed=7)[0]


def png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow writes none), from uint16 [H, W, 3]."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def hwc(loaded) -> np.ndarray:
    return loaded.pixels.permute(1, 2, 0).numpy()


def test_a_training_format_png_is_read_unchanged(original, tmp_path):
    """A 32x32 RGB PNG comes back pixel for pixel, [3, 32, 32] uint8, with no note."""
    Image.fromarray(original).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.pixels.dtype == torch.uint8 and loaded.pixels.shape == (3, 32, 32)
    assert np.array_equal(hwc(loaded), original) and loaded.notes == ()


def test_grey_8_and_16_bit_become_the_same_rgb(original, tmp_path):
    """Grey (L) is replicated into three equal channels; 16-bit grey holding v x 257 is reduced to
    v exactly (Pillow's own conversion would clip it to white), each with its note."""
    grey = np.asarray(Image.fromarray(original).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    eight, sixteen = load_image(tmp_path / "grey.png"), load_image(tmp_path / "grey16.png")
    assert np.array_equal(hwc(eight), np.repeat(grey[..., None], 3, axis=2))
    assert np.array_equal(hwc(sixteen), hwc(eight))
    assert eight.notes == ("converted L -> RGB",)
    assert sixteen.notes == ("16-bit -> 8-bit (high byte)", "converted L -> RGB")


def test_16_bit_rgb_keeps_the_high_byte(original, tmp_path):
    """A 16-bit RGB PNG holding v x 257 gives back the 8-bit image exactly, and says it was 16-bit."""
    (tmp_path / "rgb16.png").write_bytes(png_16bit_rgb(original.astype(np.uint16) * 257))
    loaded = load_image(tmp_path / "rgb16.png")
    assert np.array_equal(hwc(loaded), original) and loaded.notes == ("16-bit -> 8-bit (high byte)",)


def test_transparency_is_composited_on_white(original, tmp_path):
    """RGBA: fully transparent pixels become white, opaque ones keep their colour."""
    rgba = np.dstack([original, np.full((32, 32), 255, np.uint8)])
    rgba[:8, :8, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    loaded = hwc(load_image(tmp_path / "rgba.png"))
    assert (loaded[:8, :8] == 255).all() and np.array_equal(loaded[8:], original[8:])
    assert load_image(tmp_path / "rgba.png").notes == ("transparent pixels composited on white", "converted RGBA -> RGB")


def test_large_images_are_centre_cropped_and_area_averaged(original, tmp_path):
    """An 8x nearest upscale comes back exactly (area averaging undoes it); a 1024x768 JPEG with the
    image as its centred 768x768 square is cropped to that square and shrunk close to the original
    (JPEG is lossy); a paletted 64x48 GIF is expanded, cropped and shrunk."""
    Image.fromarray(original).resize((256, 256), Image.Resampling.NEAREST).save(tmp_path / "big.png")
    big = load_image(tmp_path / "big.png")
    assert np.array_equal(hwc(big), original) and big.notes == ("resized 256x256 -> 32x32 (area average)",)
    canvas = Image.new("RGB", (1024, 768), (0, 0, 0))
    canvas.paste(Image.fromarray(original).resize((768, 768), Image.Resampling.NEAREST), (128, 0))
    canvas.save(tmp_path / "photo.jpg", quality=95)
    photo = load_image(tmp_path / "photo.jpg")
    assert photo.notes == ("centre-cropped 1024x768 -> 768x768", "resized 768x768 -> 32x32 (area average)")
    assert np.abs(hwc(photo).astype(int) - original).mean() < 2
    Image.fromarray(original).resize((64, 48)).convert("P").save(tmp_path / "pal.gif")
    assert load_image(tmp_path / "pal.gif").notes == ("converted P -> RGB", "centre-cropped 64x48 -> 48x48",
                                                      "resized 48x48 -> 32x32 (area average)")


def test_small_images_are_enlarged(original, tmp_path):
    """A 16x16 image is enlarged to 32x32 (bicubic) and says so."""
    Image.fromarray(original).resize((16, 16)).save(tmp_path / "small.png")
    loaded = load_image(tmp_path / "small.png")
    assert loaded.pixels.shape == (3, 32, 32) and loaded.notes == ("resized 16x16 -> 32x32 (bicubic)",)


@pytest.mark.parametrize("name, content, reason", [
    ("text.png", b"this is not a PNG\n", "not an image file Pillow can read"),
    ("empty.png", b"", "empty file (0 bytes)"),
    ("cut.png", None, "cannot decode it (OSError: image file is truncated"),
    ("missing.png", False, "no such file"),
])
def test_unreadable_files_are_refused_by_name(name, content, reason, original, tmp_path):
    """A text file named .png, an empty file, a truncated PNG and a missing file each raise one
    line that starts with the file's path and says why."""
    path = tmp_path / name
    if content is None:
        Image.fromarray(original).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif content is not False:
        path.write_bytes(content)
    with pytest.raises(UnreadableImage) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: {reason}") and "\n" not in str(info.value)


def test_a_folder_stands_for_its_image_files_by_name(original, tmp_path):
    """A folder expands to the files in it with image suffixes, sorted by name (a .png that is not
    an image included, to be reported; a .txt left out); files given stay in their order."""
    for name in ("b.png", "a.JPG", "notes.txt", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    assert image_files([tmp_path / "c.png", tmp_path]) == [tmp_path / n for n in ("c.png", "a.JPG", "b.png", "c.png")]
