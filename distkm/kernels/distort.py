"""Realistic distortions of handwriting images: pure numpy + scipy.ndimage, no dask.

Each image gets its own random affine map (rotation, scale, shear, shift),
an elastic deformation (a smoothed random displacement field, after Simard
et al. 2003) and sometimes a change of stroke thickness (grey dilation or
erosion). All of it is resampled by one ``scipy.ndimage.map_coordinates``
call per block of images (bilinear, zero outside the image).

With neutral parameters (angle 0, scale 1, shear 0, shift 0, elastic 0,
thickness 0) an image is returned unchanged, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Distortions:
    """Per-image distortion parameters (arrays of length m).

    Attributes
    ----------
    angle : radians, counter-clockwise
    scale : isotropic zoom (> 1 enlarges the digit)
    shear : horizontal shear factor
    shift : (m, 2) translation in pixels (rows, columns)
    elastic : typical displacement of the elastic field, in pixels
    thickness : -1 thinner strokes, 0 unchanged, +1 thicker
    fields : (m, 2, h, w) unit-std smoothed random fields, or None when ``elastic`` is all zero
    """

    angle: np.ndarray
    scale: np.ndarray
    shear: np.ndarray
    shift: np.ndarray
    elastic: np.ndarray
    thickness: np.ndarray
    fields: np.ndarray | None = None

    @classmethod
    def neutral(cls, m):
        """Parameters that leave ``m`` images unchanged."""
        zeros = np.zeros(m)
        return cls(zeros, np.ones(m), zeros.copy(), np.zeros((m, 2)), zeros.copy(), np.zeros(m, dtype=np.int8))

    def take(self, index):
        """The parameters of a subset of the images."""
        return Distortions(self.angle[index], self.scale[index], self.shear[index], self.shift[index],
                           self.elastic[index], self.thickness[index],
                           None if self.fields is None else self.fields[index])


def random_distortions(rng, m, image_shape, strength=1.0, *, elastic_sigma=4.0, bank_size=64):
    """Draw distortions for ``m`` images of ``image_shape`` (h, w) from ``rng``.

    Ranges at ``strength=1``: rotation within +-12 degrees, scale 0.9-1.1,
    shear within +-0.15, shift within +-2 px, elastic displacement up to
    1.5 px, 30% thicker and 15% thinner strokes. They keep a digit a
    readable digit of the same class.
    """
    h, w = image_shape
    s = float(strength)
    angle = np.deg2rad(rng.uniform(-12, 12, m)) * s
    scale = 1 + rng.uniform(-0.1, 0.1, m) * s
    shear = rng.uniform(-0.15, 0.15, m) * s
    shift = rng.uniform(-2, 2, (m, 2)) * s
    elastic = rng.uniform(0, 1.5, m) * s
    thickness = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=m, p=[0.15, 0.55, 0.30])
    # Smoothing a random field per image costs more than the warp itself: smooth a bank of
    # fields once, and give each image one of them, flipped and signed at random.
    bank = rng.uniform(-1, 1, (min(m, bank_size), 2, h, w))
    bank = ndimage.gaussian_filter(bank, sigma=(0, 0, elastic_sigma, elastic_sigma), mode="constant")
    bank /= bank.std(axis=(2, 3), keepdims=True) + 1e-12
    fields = bank[rng.integers(0, len(bank), m)]
    flips = rng.integers(0, 2, (m, 2)).astype(bool)
    fields[flips[:, 0]] = fields[flips[:, 0], :, ::-1, :]
    fields[flips[:, 1]] = fields[flips[:, 1], :, :, ::-1]
    fields *= rng.choice([-1.0, 1.0], size=(m, 2, 1, 1))
    return Distortions(angle, scale, shear, shift, elastic, thickness, fields)


def distort(images, params, *, block=1024):
    """Apply ``params`` to a stack of images.

    Parameters
    ----------
    images : ndarray of shape (m, h, w) or (m, h, w, c), uint8
    params : Distortions
        Of length m.
    block : int
        Images resampled at a time (bounds the coordinate arrays).

    Returns
    -------
    ndarray like ``images``
    """
    if images.ndim == 4:  # channels: the same geometry for every channel of an image
        m, h, w, c = images.shape
        flat = np.moveaxis(images, 3, 1).reshape(m * c, h, w)
        out = distort(flat, params.take(np.repeat(np.arange(m), c)), block=block)
        return np.moveaxis(out.reshape(m, c, h, w), 1, 3)
    out = np.empty_like(images)
    for start in range(0, images.shape[0], block):
        rows = slice(start, min(start + block, images.shape[0]))
        out[rows] = _distort_block(images[rows], params.take(rows))
    return out


def _distort_block(images, p):
    m, h, w = images.shape
    work = _change_thickness(images, p.thickness).astype(np.float32)
    center = np.array([(h - 1) / 2, (w - 1) / 2])
    # Output pixel -> input coordinate: inverse scale, shear, rotation about the centre, then the shift.
    # Rows grow downwards, so a counter-clockwise turn on screen is a clockwise one in (row, col).
    cos, sin = np.cos(p.angle), -np.sin(p.angle)
    inv_scale = 1.0 / p.scale
    matrix = np.empty((m, 2, 2))
    matrix[:, 0, 0] = cos * inv_scale
    matrix[:, 0, 1] = (cos * p.shear - sin) * inv_scale
    matrix[:, 1, 0] = sin * inv_scale
    matrix[:, 1, 1] = (sin * p.shear + cos) * inv_scale
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).reshape(2, -1) - center[:, None]
    coords = np.einsum("mij,jp->mip", matrix, grid) + (center - p.shift)[:, :, None]
    coords = coords.reshape(m, 2, h, w)
    if p.fields is not None and np.any(p.elastic):
        coords += p.elastic[:, None, None, None] * p.fields
    index = np.broadcast_to(np.arange(m, dtype=np.float64)[:, None, None], (m, h, w))
    warped = ndimage.map_coordinates(work, [index, coords[:, 0], coords[:, 1]], order=1, mode="constant", cval=0.0)
    return np.clip(np.rint(warped), 0, 255).astype(images.dtype)


def _change_thickness(images, thickness):
    out = images.copy()
    thicker, thinner = thickness > 0, thickness < 0
    if thicker.any():
        out[thicker] = ndimage.grey_dilation(images[thicker], size=(1, 2, 2))
    if thinner.any():
        # A full 2x2 erosion would break 2-pixel strokes: keep half of what it removes.
        eroded = ndimage.grey_erosion(images[thinner], size=(1, 2, 2)).astype(np.uint16)
        out[thinner] = ((eroded + images[thinner]) // 2).astype(images.dtype)
    return out
