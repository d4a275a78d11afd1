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

from functools import partial
from pathlib import Path

import numpy as np

from . import chunked, config
from .data import blosc_compressor
from .outputs import atomic_output

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


def ingest_image_folder(folder, out, *, size=(28, 28), mode="L", fit="pad", invert=False, chunk_rows=None,
                        compressor=None, overwrite=False, progress=True):
    """Write the images under ``folder`` into a distkm store (see the module notes).

    Returns
    -------
    dict
        The store's ``distkm`` attributes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be HEIGHTxWIDTH with positive sides, got {size!r}")
    files, names, labels = list_images(folder)
    chunk_rows = int(chunk_rows or config.get("chunk-rows"))
    image_shape = list(size) + ([3] if mode == "RGB" else [])
    attrs = {
        "image_shape": image_shape,
        "splits": {},
        "source": {"folder": str(Path(folder).resolve()), "files": len(files)},
        "transforms": {"mode": mode, "fit": fit, "size": list(size), "resample": "lanczos", "invert": invert,
                       "exif_transpose": True},
    }
    if names is not None:
        attrs["label_names"] = names
    with atomic_output(out, overwrite=overwrite, inputs=[folder]) as tmp:
        chunked.create_store(tmp, n=len(files), n_features=int(np.prod(image_shape)), chunk_rows=chunk_rows,
                             labels=labels is not None, compressor=blosc_compressor(compressor),
                             attrs=attrs)
        n_chunks = -(-len(files) // chunk_rows)
        chunk_files = [[str(f) for f in files[i * chunk_rows:(i + 1) * chunk_rows]] for i in range(n_chunks)]
        task = partial(_ingest_chunk, out=str(tmp), chunk_files=chunk_files, labels=labels, chunk_rows=chunk_rows,
                       load=partial(load_image, size=tuple(size), mode=mode, fit=fit, invert=invert))
        chunked.run_chunk_tasks(task, list(range(n_chunks)), [len(c) for c in chunk_files], name="ingest",
                                progress=progress, desc="ingest")
        chunked.mark_complete(tmp)
    return attrs


def _ingest_chunk(i, *, out, chunk_files, labels, chunk_rows, load):
    images = np.stack([load(f).reshape(-1) for f in chunk_files[i]])
    chunk_labels = None if labels is None else labels[i * chunk_rows: i * chunk_rows + len(images)]
    return chunked.write_chunk(out, i, images, chunk_labels)
