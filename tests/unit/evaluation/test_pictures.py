"""Every picture of a run reads at its default size, for k from 2 to 256 and clusters of 0, 1 or a few members.

The drawing functions are called directly with inputs shaped like a run's
(no cluster, no store): the PNG written must be within a screen-sized
canvas, not a thin strip, and not mostly blank paper.
"""

import numpy as np
import pytest
from PIL import Image

from distkm.evaluation import pictures
from distkm.kernels.sampling import TopRows

#: Largest side of any picture, pixels: a laptop screen scrolls, it does not zoom out to 5,000 pixels.
MAX_SIDE = 3000
#: Largest ratio of the long side to the short one (members of k=2 were 2,606 x 166, a palette 1,880 x 162).
MAX_ASPECT = 8


def _digits(n, rng, shape=(28, 28)):
    """``n`` light-on-dark rings, MNIST-like: a stroke of 255 on 0, ~15 % of the pixels."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h * w), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * (h, w)
        ry, rx = rng.uniform(0.2, 0.35, 2) * (h, w)
        r = np.hypot((y - cy) / ry, (x - cx) / rx)
        out[i] = np.where(np.abs(r - 1) < 0.25, 255, 0).ravel()
    return out


def _members(sizes, m, rng):
    """The nearest and random members of clusters of the given sizes, as the evaluation pass keeps them."""
    k = len(sizes)
    shown = np.minimum(sizes, m)
    index = np.where(np.arange(m) < shown[:, None], np.arange(k * m).reshape(k, m), -1)
    rows = np.zeros((k, m, 784), np.uint8)
    rows[index >= 0] = _digits(int((index >= 0).sum()), rng)
    keys = np.where(index >= 0, 1.0, np.inf)
    return TopRows(keys, index, rows)


def _sizes(k, rng):
    """Cluster sizes with an empty cluster, a single member and a few, the others up to hundreds."""
    sizes = rng.integers(20, 400, k)
    sizes[:3] = (0, 1, 3)[:k]
    return sizes


def _check(path, *, ink):
    """Size within bounds and at least ``ink`` of the pixels not paper; returns (width, height)."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
        pixels = np.asarray(img.convert("RGB"))
    assert 100 <= width <= MAX_SIDE and 100 <= height <= MAX_SIDE, (path.name, width, height)
    assert max(width / height, height / width) <= MAX_ASPECT, (path.name, width, height)
    share = float((pixels.min(axis=2) < 245).mean())
    assert share >= ink, (path.name, share)
    return width, height


@pytest.mark.parametrize("k", [2, 10, 256])
def test_every_picture_of_a_run_reads(k, tmp_path):
    rng = np.random.default_rng(k)
    sizes = _sizes(k, rng)
    titles = [f"#{j} → {j % 10}" if sizes[j] else f"#{j} → ∅" for j in range(k)]
    centers = _digits(k, rng).astype(np.float64) * 0.8

    _check(pictures.plot_centroids(centers, (28, 28), tmp_path / "centroids.png", titles=titles,
                                   suptitle=f"the {k} centroids (train rows)"), ink=0.08)

    # 20 members a side (the default), 6 at k=256: its 16 pages of 20 took 7 s of the test's time.
    top = _members(sizes, 20 if k <= 10 else 6, rng)
    pages = pictures.plot_members(top, top, (28, 28), tmp_path / "members", titles=titles)
    assert len(pages) == -(-k // pictures.MEMBERS_PER_PAGE)  # 16 clusters of one line a page
    for page in pages:
        _check(page, ink=0.05)

    table = np.zeros((k, 10), np.int64)
    for j, size in enumerate(sizes):  # each cluster mostly one class
        table[j] = rng.multinomial(size, np.roll([0.7] + [0.3 / 9] * 9, j % 10))
    mapped = np.where(sizes > 0, table.argmax(axis=1), -1)
    # (the palest blue, a share near 0, is paper here: k=2 has an empty and a single-member cluster)
    _check(pictures.plot_confusion(table, [str(c) for c in range(10)], mapped, tmp_path / "confusion.png"),
           ink=0.05)

    n_iter = {2: 1, 10: 30, 256: 300}[k]  # one iteration, a usual fit, max_iter reached
    history = [{"iteration": i + 1, "inertia": 1e9 * (1 + np.exp(-i / 20)), "center_shift": 1e4 * np.exp(-i / 15)}
               for i in range(n_iter)]
    _check(pictures.plot_convergence(history, tmp_path / "convergence.png", tol=1e-3), ink=0.04)

    shares = rng.dirichlet(np.full(k, 0.5))
    shares[-1] = 0.0  # a colour no pixel kept
    _check(pictures.plot_palette(rng.integers(0, 256, (k, 3)), shares / shares.sum(), tmp_path / "palette.png"),
           ink=0.5)

    ks = sorted({2, 5, 8, 10, 12, 16, 20, 25, 64, k})
    rows = [{"k": n, "inertia": 3e10 / n ** 0.3, "train_accuracy": 0.3 + 0.1 * np.log(n), "nmi": 0.4}
            for n in ks]
    _check(pictures.plot_sweep(rows, tmp_path / "elbow.png"), ink=0.04)


def test_members_of_tiny_clusters_make_a_small_page(tmp_path):
    """Up to 90 members kept, but clusters of 0 to 5: a page as wide as 5 members, not 181 thumbnails of paper."""
    rng = np.random.default_rng(0)
    top = _members(np.array([0, 1, 2, 3, 1, 0, 2, 5]), 90, rng)
    [page] = pictures.plot_members(top, top, (28, 28), tmp_path / "members", titles=[f"#{j}" for j in range(8)])
    width, height = _check(page, ink=0.03)
    assert width < 1000 and height < 700


def test_many_members_wrap_onto_lines_within_the_page(tmp_path):
    """90 members a side wrap onto lines of 20; a page keeps to 16 lines, so three clusters of 5 lines a page."""
    rng = np.random.default_rng(1)
    top = _members(np.full(7, 500), 90, rng)
    pages = pictures.plot_members(top, top, (28, 28), tmp_path / "members", titles=[f"#{j}" for j in range(7)])
    assert len(pages) == 3
    for page in pages:
        _check(page, ink=0.08)


def test_colour_members_of_large_images_are_shrunk_to_thumbnails(tmp_path):
    """96 x 96 RGB images: thumbnails of ~56 pixels (they were drawn at 2.4 pixels a pixel, an 8,207-pixel page)."""
    rng = np.random.default_rng(2)
    sizes = np.array([10, 3, 0, 40])
    k, m = len(sizes), 20
    index = np.where(np.arange(m) < np.minimum(sizes, m)[:, None], np.arange(k * m).reshape(k, m), -1)
    rows = rng.integers(0, 256, (k, m, 96 * 96 * 3)).astype(np.uint8)
    top = TopRows(np.where(index >= 0, 1.0, np.inf), index, rows)
    [page] = pictures.plot_members(top, top, (96, 96, 3), tmp_path / "members", titles=[f"#{j}" for j in range(k)])
    width, _ = _check(page, ink=0.3)
    assert width < 1600
