"""Colour quantisation: k-means on the pixels (n x 3) of one image or a folder of images.

The pixels are streamed into a temporary zarr store (one row per pixel,
chunked by rows), clustered by the same distributed Lloyd iterations as any
store, and recoloured chunk by chunk on the workers into a second zarr
array, from which each output image is assembled. The workers never hold
more than a chunk, so an image larger than a worker's memory limit is fine;
the client holds one image at a time, as decoding and encoding it requires.

The palette is the centroids rounded to 8 bits. Pixel sums are exact
(integers, see :mod:`distkm.kernels`), so a colour that makes up a whole
cluster comes back exactly.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from PIL import Image

from distkm import config
from distkm.estimator import KMeans
from distkm.io import locations
from distkm.io.folders import decoded, list_images, open_image
from distkm.io.outputs import atomic_output, check_output_path, output_lock, write_text_atomic
from distkm.io.stores import blosc_compressor, open_store
from distkm.kernels.assign import palette_lookup

logger = logging.getLogger("distkm")

#: Output formats: lossless ones keep the palette exact; JPEG blurs it.
IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jpg", ".jpeg")


@dataclass
class QuantizeResult:
    """Outcome of :func:`quantize`.

    Attributes
    ----------
    palette : ndarray of shape (k, 3), uint8
    shares : ndarray of shape (k,)
        Share of all pixels recoloured with each palette colour.
    outputs : list of Path
        The recoloured images, in input order.
    palette_files : list of Path
        The palette as JSON and as a PNG of swatches.
    n_pixels : int
    n_iter : int
    inertia : float
    """

    palette: np.ndarray
    shares: np.ndarray
    outputs: list
    palette_files: list
    n_pixels: int
    n_iter: int
    inertia: float


def quantize(source, out, k, *, seed=0, max_iter=300, tol=1e-4, chunk_pixels=None,
             overwrite=False, palette_picture=True):
    """Recolour an image, or every image of a folder, with the ``k`` colours k-means finds in their pixels.

    Runs on the current Dask scheduler (a ``distributed.Client`` when one is active).

    Parameters
    ----------
    source : str or Path
        An image file, or a folder of images (searched recursively; one palette for all).
    out : str or Path
        The output image (for a file), or the output folder (for a folder: same relative
        paths, as PNG).
    k : int
        Number of colours.
    seed : int
        Seed of the k-means++ initialisation.
    max_iter, tol
        As for :class:`~distkm.KMeans`.
    chunk_pixels : int, optional
        Pixels per chunk of the temporary store, one task each (default ``distkm.quantize-chunk-pixels``).
    overwrite : bool
        Replace existing outputs.
    palette_picture : bool
        Also draw the palette as a PNG.

    Returns
    -------
    QuantizeResult
    """
    source, out = locations.local_path(source), locations.local_path(out)
    inputs, shapes = check_request(source, out, k, overwrite=overwrite)
    with ExitStack() as stack:
        if source.is_dir():
            # The whole output folder appears at once, when every image is written.
            folder = stack.enter_context(atomic_output(out, overwrite=overwrite, inputs=[source]))
            outputs = [folder / p.relative_to(source).with_suffix(".png") for p in inputs]
            palette_stem, work_parent = folder / "palette", out.parent
        else:
            outputs = [out]
            palette_stem, work_parent = _palette_stem(out), out.parent
            stack.enter_context(output_lock(out))
            for path in _file_outputs(out):  # again, now that no other command can write them
                check_output_path(path, overwrite=overwrite, inputs=[source])
        work_parent.mkdir(parents=True, exist_ok=True)
        # The pixels live in a hidden folder beside the outputs: on a cluster, storage every worker sees.
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.quantize-", dir=work_parent))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        _write_pixels(inputs, shapes, work / "pixels.zarr", chunk_pixels or config.get_int("quantize-chunk-pixels"))
        pixels = open_store(work / "pixels.zarr").images
        n = pixels.shape[0]
        model = KMeans(n_clusters=k, random_state=seed, max_iter=max_iter, tol=tol, dtype="float32").fit(pixels)
        palette = np.clip(np.rint(model.cluster_centers_.astype(np.float64)), 0, 255).astype(np.uint8)
        recoloured = _recolour(pixels, model, palette, work / "recoloured.zarr")
        written = _write_images(recoloured, shapes, outputs, overwrite=overwrite)
        shares = model.cluster_sizes_ / n
        names = [str(p.relative_to(palette_stem.parent)) for p in written]
        palette_files = _write_palette(palette_stem, palette, shares, names, picture=palette_picture)
    if source.is_dir():  # report where the files are now, not where they were written
        written = [out / p.relative_to(folder) for p in written]
        palette_files = [out / p.relative_to(folder) for p in palette_files]
    return QuantizeResult(palette, shares, written, palette_files, n, int(model.n_iter_), float(model.inertia_))


def check_request(source, out, k, *, overwrite=False):
    """Refuse, before any pixel is read or any cluster started, what :func:`quantize` would refuse.

    Reads only the images' headers.

    Returns
    -------
    inputs : list of Path
        The images, in order.
    shapes : list of (height, width)
        Their sizes as they will be decoded.
    """
    source, out = locations.local_path(source), locations.local_path(out)
    if not source.exists():
        raise FileNotFoundError(f"no image or folder at {str(source)!r}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if source.is_dir():
        inputs, outputs = list_images(source)[0], [out]
    else:
        if out.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"out must name an image file ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                             f"got {str(out)!r}")
        inputs, outputs = [source], _file_outputs(out)
    for path in outputs:
        check_output_path(path, overwrite=overwrite, inputs=[source])
    shapes = [_decoded_shape(p) for p in inputs]
    n = sum(h * w for h, w in shapes)
    if n < k:
        raise ValueError(f"the image(s) have {n} pixels, fewer than k={k} colours")
    return inputs, shapes


def _palette_stem(out):
    return out.with_name(out.stem + "-palette")


def _file_outputs(out):
    """What quantizing one image into ``out`` writes: the image and its palette as JSON and PNG."""
    stem = _palette_stem(out)
    return [out, stem.with_suffix(".json"), stem.with_suffix(".png")]


def _decoded_shape(path):
    """(height, width) of an image as it will be decoded, from its header alone."""
    with open_image(path) as img:
        width, height = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotations by 90 degrees swap the sides
            width, height = height, width
    return height, width


def _load_rgb(path):
    with open_image(path) as img:
        return np.asarray(decoded(img, "RGB", path))


def _write_pixels(inputs, shapes, path, chunk_pixels):
    """Append the pixels of every image (of the sizes their headers gave) into one (n, 3) uint8 zarr array."""
    n = sum(h * w for h, w in shapes)
    group = zarr.open_group(path, mode="w", zarr_format=3)
    images = group.create_array("images", shape=(n, 3), chunks=(chunk_pixels, 3), dtype="uint8",
                                compressors=blosc_compressor(), dimension_names=["pixel", "channel"])
    start = 0
    carry = np.empty((0, 3), dtype=np.uint8)  # pixels of the previous image(s) not yet filling a chunk
    for p, shape in zip(inputs, shapes):
        rgb = _load_rgb(p)
        if rgb.shape[:2] != shape:
            raise ValueError(f"image {p} decoded as {rgb.shape[:2]}, its header said {shape}")
        flat = rgb.reshape(-1, 3)
        if carry.shape[0]:
            head = chunk_pixels - carry.shape[0]
            carry = np.concatenate([carry, flat[:head]])
            flat = flat[head:]
            if carry.shape[0] == chunk_pixels:
                images[start:start + chunk_pixels] = carry
                start, carry = start + chunk_pixels, np.empty((0, 3), dtype=np.uint8)
        whole = (flat.shape[0] // chunk_pixels) * chunk_pixels
        for i in range(0, whole, chunk_pixels):  # whole chunks only: no read-modify-write of a chunk
            images[start:start + chunk_pixels] = flat[i:i + chunk_pixels]
            start += chunk_pixels
        if whole < flat.shape[0]:
            carry = np.concatenate([carry, flat[whole:]])
        del rgb, flat
    if carry.shape[0]:
        images[start:start + carry.shape[0]] = carry
    group.attrs["distkm"] = {"complete": True, "image_shapes": [list(s) for s in shapes]}


def _recolour(pixels, model, palette, path):
    """Every pixel replaced by its palette colour, written chunk by chunk by the workers."""
    labels = model.predict(pixels)
    colours = labels.map_blocks(palette_lookup, palette, new_axis=1, chunks=(labels.chunks[0], (3,)),
                                dtype=np.uint8, name=f"distkm-recolour-{tokenize(labels, palette)}")
    z = zarr.create_array(path, shape=colours.shape, chunks=(pixels.chunks[0][0], 3), dtype=np.uint8,
                          compressors=blosc_compressor())
    da.store(colours, z, lock=False, optimize_graph=False)  # keep the distkm-recolour name on the dashboard
    return z


def _write_images(recoloured, shapes, outputs, *, overwrite):
    start, written = 0, []
    for shape, path in zip(shapes, outputs):
        n = shape[0] * shape[1]
        image = Image.fromarray(recoloured[start:start + n].reshape(*shape, 3), mode="RGB")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        try:
            image.save(tmp)
            if path.exists() and not overwrite:
                raise FileExistsError(f"output {str(path)!r} appeared while writing; nothing was replaced")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(path)
        start += n
    return written


def _write_palette(stem, palette, shares, images, *, picture):
    order = np.argsort(-np.asarray(shares), kind="stable")  # the most used colour first
    colours = [{"rgb": [int(v) for v in palette[j]], "hex": "#{:02x}{:02x}{:02x}".format(*palette[j]),
                "share": float(shares[j])} for j in order]
    json_path = stem.with_suffix(".json")
    write_text_atomic(json_path, json.dumps({"format": "distkm-palette", "images": images, "colours": colours},
                                                indent=2) + "\n")
    files = [json_path]
    if picture:
        from distkm.evaluation.pictures import plot_palette

        files.append(plot_palette(palette, shares, stem.with_suffix(".png")))
    return files
