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

from pathlib import Path

import numpy as np



IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FITS = ("pad", "crop", "stretch")
MODES = {"L": 1, "RGB": 3}


def list_images(folder):
    """Image files under ``folder`` (sorted), and their label names if all sit in first-level subfolders."""
    folder = Path(folder)
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


def load_image(path, *, size, mode="L", fit="pad", invert=False):
    """One image file as a ``size + (channels,)`` uint8 array (channels dropped for "L")."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    height, width = size
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    resample = Image.Resampling.LANCZOS
    if fit == "pad":
        img = ImageOps.pad(img, (width, height), method=resample, color=0)
    elif fit == "crop":
        img = ImageOps.fit(img, (width, height), method=resample)
    else:
        img = img.resize((width, height), resample=resample)
    array = np.asarray(img, dtype=np.uint8)
    return 255 - array if invert else array
