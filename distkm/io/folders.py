"""Ingest a folder of images (PNG, JPEG, ...) of any size as a distkm store of fixed-size rows.

Every image is decoded with Pillow, turned upright (EXIF), converted to
grayscale ("L") or RGB, fitted to ``size`` (``pad``: keep the aspect ratio
and pad with black, ``crop``: keep the aspect ratio and crop the centre,
``stretch``: resize) with Lanczos resampling, optionally inverted (dark
strokes on white paper become MNIST's white on black), and flattened into a
uint8 row. Images in first-level subfolders are labelled by their folder
(``cats/1.png`` -> label of "cats"); a flat folder gives no labels. Chunks
are converted in parallel by tasks on the current Dask scheduler.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from distkm import config
from distkm.io import locations

logger = logging.getLogger("distkm")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FITS = ("pad", "crop", "stretch")
MODES = {"L": 1, "RGB": 3}


def list_images(folder):
    """Image files under ``folder`` (sorted), and their label names if all sit in first-level subfolders."""
    folder = locations.local_path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {str(folder)!r}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {str(folder)!r}")
    parents = [p.relative_to(folder).parts for p in files]
    if all(len(parts) == 2 for parts in parents):
        names = sorted({parts[0] for parts in parents})
        if len(names) > 256:
            raise ValueError(f"{folder} has {len(names)} class folders; labels are uint8 (at most 256 classes)")
        return files, names, np.array([names.index(parts[0]) for parts in parents], dtype=np.uint8)
    return files, None, None


@contextmanager
def open_image(path):
    """An image opened with Pillow, refused in one line naming the file when it is not one or is too big.

    The limit is ``distkm.max-image-pixels``, checked from the header before
    anything is decoded: a small file can claim a huge image (a decompression
    bomb: a 946 KB PNG decodes to 900 Mpx). Pillow's own check (a warning,
    then an error at twice its default) stands aside while the file is open:
    this one replaces it, in distkm's words.
    """
    limit = config.get_int("max-image-pixels")
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        try:
            img = Image.open(path)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
        with img:
            width, height = img.size
            if width * height > limit:
                raise ValueError(f"image {path} has {width}x{height} = {width * height:,} pixels, over the limit of "
                                 f"{limit:,} (distkm.max-image-pixels); raise it for a file you trust")
            yield img
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decoded(img, mode, path):
    """``img`` upright (EXIF) in ``mode`` ("L" or "RGB"), 16-bit images scaled, and what is dropped said.

    Pillow's ``convert`` clips 16-bit values to 255 (a 16-bit PNG became all
    white): they are scaled to 8 bits instead. An alpha channel and the
    frames of an animation after the first are dropped, with a log line.
    """
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        logger.warning("%s: an animation of %d frames; only the first is used", path, frames)
    if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
        logger.warning("%s: its alpha channel (transparency) is dropped; the colours are used as they are", path)
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):  # 16-bit (I;16, I;16B) or 32-bit integer grey: 0..65535 to 0..255
        values = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((values >> 8).clip(0, 255).astype(np.uint8), mode="L")
    return img.convert(mode)


def load_image(path, *, size, mode="L", fit="pad", invert=False):
    """One image file as a ``size + (channels,)`` uint8 array (channels dropped for "L")."""
    height, width = size
    with open_image(path) as img:
        img = decoded(img, mode, path)
    resample = Image.Resampling.LANCZOS
    if fit == "pad":
        img = ImageOps.pad(img, (width, height), method=resample, color=0)
    elif fit == "crop":
        img = ImageOps.fit(img, (width, height), method=resample)
    else:
        img = img.resize((width, height), resample=resample)
    array = np.asarray(img, dtype=np.uint8)
    return 255 - array if invert else array
