"""Image files brought to the format the network was trained on: 32x32 RGB, 8 bits a channel.

CIFAR-10's images are exactly that, so a file of any other size or mode is converted in a fixed
order, and each change is noted for the user:

1. the first frame of an animation or multi-page file;
2. the EXIF orientation applied (a phone photo shows upright, as its owner saw it);
3. 16-bit samples reduced to 8 bits by keeping the high byte, as Pillow itself reads 16-bit RGB PNGs
   (an 8-bit value v stored as 16-bit v x 257 comes back as v exactly);
4. transparent pixels composited on white, as an image viewer shows them (CIFAR-10 has no alpha);
5. the mode converted to RGB (grey replicated into three channels, palettes expanded, CMYK converted);
6. the largest centred square cropped, so objects keep their proportions as in CIFAR-10's photos;
7. the square resized to 32x32: by area averaging when shrinking (every source pixel counts
   equally, no aliasing), bicubic when enlarging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from resnet_ocp.errors import UserError

SIDE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
# The EXIF tag that says how the camera was held (1: upright).
EXIF_ORIENTATION = 0x0112
WHITE = (255, 255, 255)


class UnreadableImage(UserError):
    """A file that is not an image Pillow can decode; the message names the file and why."""


@dataclass(frozen=True)
class LoadedImage:
    """One file in the training format: ``pixels`` uint8 [3, 32, 32] and what was done to it."""

    path: Path
    pixels: torch.Tensor
    notes: tuple[str, ...]


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The files to predict, in the order given: a folder stands for the image files directly in
    it (by suffix, sorted by name); any other path is taken as given, image or not, so a file
    that cannot be read is reported, not skipped.

    Args:
        paths: files and folders from the command line.
    """
    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{given} holds no image files ({', '.join(IMAGE_SUFFIXES)}); give image files or a folder of them")
            files += found
        else:
            files.append(given)
    return files


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read an image file and convert it to 32x32 RGB uint8 (see the module's steps).

    Args:
        path: the file.

    Raises:
        UnreadableImage: the file is missing, empty or not an image Pillow can decode.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    if path.stat().st_size == 0:
        raise UnreadableImage(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            pixels, notes = to_training_format(img)
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path}: not an image file Pillow can read") from None
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, EOFError, ValueError... on corrupt data
        raise UnreadableImage(f"{path}: cannot decode it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return LoadedImage(path, torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), tuple(notes))


def to_training_format(img: Image.Image) -> tuple[np.ndarray, list[str]]:
    """An open Pillow image as uint8 [32, 32, 3] RGB, and a note for each change made.

    Args:
        img: the image as opened (not yet loaded, so its 16-bit PNG tiles can still be seen).
    """
    notes = []
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        img.seek(0)
        notes.append(f"first of {frames} frames")
    # Pillow reads 16-bit RGB(A) PNGs as 8-bit modes; only the undecoded tiles still say 16.
    sixteen = any(";16" in str(tile[3]) for tile in getattr(img, "tile", None) or [])
    img.load()
    mode = img.mode
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
        notes.append(f"rotated upright (EXIF orientation {orientation})")
    if mode.startswith("I") or mode == "F":
        img, note = _to_8_bit_grey(img)
        notes.append(note)
        mode = img.mode
    elif sixteen:
        notes.append("16-bit -> 8-bit (high byte)")
    if "A" in img.mode or "transparency" in img.info:
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            background = Image.new("RGBA", rgba.size, (*WHITE, 255))
            img = Image.alpha_composite(background, rgba)
            notes.append("transparent pixels composited on white")
    if img.mode != "RGB":
        notes.append(f"converted {mode} -> RGB")
        img = img.convert("RGB")
    width, height = img.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        notes.append(f"centre-cropped {width}x{height} -> {side}x{side}")
    if side != SIDE:
        resample = Image.Resampling.BOX if side > SIDE else Image.Resampling.BICUBIC
        img = img.resize((SIDE, SIDE), resample)
        notes.append(f"resized {side}x{side} -> {SIDE}x{SIDE} ({'area average' if side > SIDE else 'bicubic'})")
    return np.asarray(img, dtype=np.uint8).copy(), notes


def _to_8_bit_grey(img: Image.Image) -> tuple[Image.Image, str]:
    """A 16-bit, 32-bit integer or float grey image as 8-bit ``L``. Pillow's own conversion clips
    these at 255 (a 16-bit image turns almost white), so the bits are reduced here."""
    values = np.asarray(img)
    if img.mode == "F":
        # Float images have no agreed range: [0, 1] when they fit in it, else 0..255.
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(values) * scale, 0, 255).round().astype(np.uint8), "L"), "32-bit float -> 8-bit"
    if img.mode.startswith("I;16") or (values.size and values.max() > 255):
        return Image.fromarray((np.clip(values, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8), "L"), "16-bit -> 8-bit (high byte)"
    return Image.fromarray(values.astype(np.uint8), "L"), f"{img.mode} -> 8-bit"
