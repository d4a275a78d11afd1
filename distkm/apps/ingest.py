"""``distkm ingest folder``: a folder of images into a distkm store, chunk by chunk on the cluster."""

from __future__ import annotations

from functools import partial

import numpy as np

from distkm import config
from distkm.engine.run import run_chunk_tasks
from distkm.io import locations
from distkm.io.folders import FITS, MODES, list_images, load_image
from distkm.io.outputs import atomic_output
from distkm.io.stores import blosc_compressor, create_store, mark_complete, write_chunk


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
        "source": {"folder": locations.recorded(folder), "files": len(files)},
        "transforms": {"mode": mode, "fit": fit, "size": list(size), "resample": "lanczos", "invert": invert,
                       "exif_transpose": True},
    }
    if names is not None:
        attrs["label_names"] = names
    with atomic_output(out, overwrite=overwrite, inputs=[folder]) as tmp:
        create_store(tmp, n=len(files), n_features=int(np.prod(image_shape)), chunk_rows=chunk_rows,
                             labels=labels is not None, compressor=blosc_compressor(compressor),
                             attrs=attrs)
        n_chunks = -(-len(files) // chunk_rows)
        chunk_files = [[str(f) for f in files[i * chunk_rows:(i + 1) * chunk_rows]] for i in range(n_chunks)]
        task = partial(_ingest_chunk, out=str(tmp), chunk_files=chunk_files, labels=labels, chunk_rows=chunk_rows,
                       load=partial(load_image, size=tuple(size), mode=mode, fit=fit, invert=invert))
        run_chunk_tasks(task, list(range(n_chunks)), [len(c) for c in chunk_files], name="ingest",
                                progress=progress, desc="ingest")
        mark_complete(tmp)
    return attrs


def _ingest_chunk(i, *, out, chunk_files, labels, chunk_rows, load):
    images = np.stack([load(f).reshape(-1) for f in chunk_files[i]])
    chunk_labels = None if labels is None else labels[i * chunk_rows: i * chunk_rows + len(images)]
    return write_chunk(out, i, images, chunk_labels)
