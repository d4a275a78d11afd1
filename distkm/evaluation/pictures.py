"""Pictures of a run: centroids, cluster members, confusion matrix, convergence, elbow, palette.

All drawn with matplotlib's object API (``matplotlib.figure.Figure``, no
pyplot): no global state, no display needed, safe in threads. Every
function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

DPI = 100
#: Lines of thumbnails per page of the members picture: clusters per page when each takes one line.
MEMBERS_PER_PAGE = 16
#: Members a line on each side (nearest, random) of the members picture; more wrap onto further lines.
MEMBERS_PER_LINE = 20
#: Side of a thumbnail of the members picture on the page, in pixels.
TILE_PIXELS = 56
#: Clusters up to which the confusion matrix writes its counts in the cells (beyond, colour and colorbar only).
CONFUSION_COUNTS_K = 32
#: Clusters a column of the confusion matrix; more are set side by side in several columns.
CONFUSION_ROWS = 64


def _save(fig, path):
    path = Path(path)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def plot_centroids(centers, image_shape, path, *, titles=None, suptitle=None):
    """The centroids as a grid of images, each titled (e.g. ``#3 → 7``).

    One image of all the tiles, framed and titled on one axes (an axes per
    centroid took 2.9 s at k=256). Tiles are 1.1 inches up to k=100, 0.9 up
    to k=784 (k=256: 16 x 16 tiles, ~1,650 x 2,000 pixels), smaller beyond so
    that the picture stays within about 2,800 pixels; titles at 9 points
    while they fit.
    """
    centers = np.asarray(centers)
    k = centers.shape[0]
    cols = min(k, 10) if k <= 100 else min(math.ceil(math.sqrt(k)), 32)
    rows = math.ceil(k / cols)
    title_in = 0.24 if titles is not None else 0.0
    cell = min(1.1 if k <= 100 else 0.9, 28.0 / cols - 0.1, 28.0 / rows - 0.1 - title_in)  # inches a tile
    if cell < 0.6:  # too small for a legible title
        titles, title_in = None, 0.0
    h, w = image_shape[:2]
    per_inch = max(h, w) / cell  # image pixels an inch
    gap, top = round(0.1 * per_inch), round(title_in * per_inch)
    colour = len(image_shape) == 3
    paper = 255 if colour else 0  # grey centroids are drawn dark on light: 0 is white
    image = np.full((rows * (top + h + gap), cols * (w + gap) + gap, *image_shape[2:]), paper, np.uint8)
    corners = []
    for j in range(k):
        r, c = divmod(j, cols)
        y, x = r * (top + h + gap) + top, c * (w + gap) + gap
        image[y: y + h, x: x + w] = np.clip(np.rint(centers[j].astype(np.float64)), 0, 255).reshape(image_shape)
        corners.append((x, y))
    height_in = image.shape[0] / per_inch
    head = 0.45 if suptitle else 0.0
    fig = Figure(figsize=(image.shape[1] / per_inch, height_in + head))
    ax = fig.add_axes((0, 0, 1, height_in / (height_in + head)))
    interpolation = "nearest" if per_inch <= DPI else "auto"  # shrunk photos are smoothed, not aliased
    if colour:
        ax.imshow(image, interpolation=interpolation, aspect="equal")
    else:
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=255, interpolation=interpolation, aspect="equal")
    ax.add_collection(PatchCollection([Rectangle((x - 0.5, y - 0.5), w, h) for x, y in corners],
                                      facecolor="none", edgecolor="0.25", linewidth=0.8))
    if titles is not None:
        # 9 points, smaller where a long class name would spill over the neighbours' titles.
        fontsize = max(6.0, min(9.0, (cell + 0.08) * 72 / (0.6 * max(map(len, titles)))))
        for (x, y), title in zip(corners, titles):
            ax.text(x + w / 2 - 0.5, y - 0.5 - 0.04 * per_inch, title, ha="center", va="bottom", fontsize=fontsize)
    ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=11, y=1 - 0.08 / (height_in + head), va="top")
    return _save(fig, path)


def mosaic(images, gap=2, fill=0):
    """Tile a (rows, cols, h, w[, c]) array of images into one image, ``gap`` pixels apart."""
    rows, cols, h, w = images.shape[:4]
    tail = images.shape[4:]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tail), fill, dtype=images.dtype)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = images[r, c]
    return out


def _tile_scale(image_shape):
    """Screen pixels per image pixel that make a thumbnail about TILE_PIXELS wide.

    Small images are enlarged by a whole factor (crisp pixels under nearest
    interpolation: MNIST's 28 pixels twice over); large ones are shrunk.
    """
    side = max(image_shape[:2])
    return max(1, round(TILE_PIXELS / side)) if side <= TILE_PIXELS else TILE_PIXELS / side


def plot_members(nearest, random, image_shape, path_stem, *, titles, per_page=MEMBERS_PER_PAGE):
    """For each cluster, one row: its members nearest the center, then random members.

    The thumbnails are tiled into one image per page (one ``imshow``, not one
    axes per thumbnail: 40 x 16 axes take seconds to draw). The page is as
    wide as the members it shows (clusters of a few members give a narrow
    page, not a wide blank one); more than ``MEMBERS_PER_LINE`` members a
    side (half as many up to 5 clusters) wrap onto further lines, and a page
    holds ``per_page`` lines, so that it stays within about 2,600 x 1,100
    pixels whatever the number of members.

    Parameters
    ----------
    nearest, random : TopRows
        From the evaluation pass (``rows`` of shape (k, m, d)).
    image_shape : tuple
    path_stem : Path
        Pages are written as ``<stem>-01.png``, ``<stem>-02.png``... (one page when all clusters fit on
        one: ``<stem>.png``).
    titles : list of str
        Row label of every cluster.
    per_page : int
        Lines of thumbnails a page: clusters a page when each takes one line.

    Returns
    -------
    list of Path
    """
    k = nearest.keys.shape[0]
    shown = np.maximum(nearest.counts, random.counts)  # members a side, per cluster (fewer than m when it is small)
    # Up to 5 clusters, half as many a line: two clusters of 20 + 20 made a 2,558 x 163 strip, now 1,300 x 270.
    per_line = MEMBERS_PER_LINE if k > 5 else max(1, MEMBERS_PER_LINE // 2)
    lines = np.maximum(1, -(-shown // per_line))  # each cluster as many as its members need (an empty one: 1)
    pages = [[]]
    for j in range(k):
        if pages[-1] and lines[pages[-1]].sum() + lines[j] > per_page:
            pages.append([])
        pages[-1].append(j)
    paths = []
    for number, clusters in enumerate(pages, 1):
        name = f"{path_stem.name}.png" if len(pages) == 1 else f"{path_stem.name}-{number:02d}.png"
        paths.append(_members_page(nearest, random, image_shape, clusters, [titles[j] for j in clusters],
                                   shown[clusters], per_line, path_stem.with_name(name)))
    return paths


def _members_page(nearest, random, image_shape, clusters, titles, shown, per_line, path):
    colour = len(image_shape) == 3
    h, w = image_shape[:2]
    gap = max(2, round(2 / _tile_scale(image_shape)))  # ~4 screen pixels between thumbnails
    n = int(shown.max())
    cols = max(1, min(n, per_line))
    lines = np.maximum(1, -(-shown // cols))
    # Clusters of several lines are set apart by a wider gap than the lines within one.
    between = gap if lines.max() == 1 else max(gap, h // 2)
    tops = np.concatenate([[0], np.cumsum(lines * (h + gap) - gap + between)])  # each cluster's first line
    side = cols * (w + gap)  # one side's width, with the gap after it
    # Empty slots and the gaps are paper: white, which is 0 ink for grey digits drawn dark on light.
    paper = 255 if colour else 0
    image = np.full((tops[-1] - between, 2 * side + w, *image_shape[2:]), paper, np.uint8)
    for r, j in enumerate(clusters):
        for s, source in enumerate((nearest, random)):
            for slot in np.flatnonzero(source.index[j] >= 0):
                y = tops[r] + (slot // cols) * (h + gap)
                x = s * (side + w) + (slot % cols) * (w + gap)
                image[y: y + h, x: x + w] = (np.clip(np.rint(source.rows[j, slot].astype(np.float64)), 0, 255)
                                             .reshape(image_shape))
    scale = _tile_scale(image_shape)
    width_px, height_px = image.shape[1] * scale, image.shape[0] * scale
    # The figure is the image at its scale; the labels lie outside it, and the tight bounding box takes them in.
    fig = Figure(figsize=(width_px / DPI, height_px / DPI))
    ax = fig.add_axes((0, 0, 1, 1))
    # Text in proportion to the page, which is seen scaled down to a laptop's width (~1,400 pixels): a page
    # of 41 MNIST thumbnails a line gets 16-point labels, a narrow one 11 points.
    fontsize = max(11, round(width_px / 150))
    interpolation = "nearest" if scale >= 1 else "auto"  # shrunk photos are smoothed, not aliased
    if colour:
        ax.imshow(image, interpolation=interpolation, aspect="equal")
    else:
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=255, interpolation=interpolation, aspect="equal")
    centres = [tops[r] + (lines[r] * (h + gap) - gap) / 2 for r in range(len(clusters))]
    ax.set_yticks(centres, titles, fontsize=fontsize)
    if n:  # (a page of empty clusters has no thumbnails to head, and is too narrow for the headers)
        ax.set_xticks([(side - gap) / 2, side + w + (side - gap) / 2],
                      [f"{n} nearest the center", f"{n} random members"], fontsize=fontsize)
    else:
        ax.set_xticks([])
    for r, j in enumerate(clusters):
        if not (nearest.index[j] >= 0).any():
            ax.text(0, centres[r], "no members", va="center", ha="left", fontsize=fontsize, color="0.45",
                    style="italic")
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return _save(fig, path)


def plot_confusion(table, class_names, cluster_to_class, path, *, title="clusters vs true labels"):
    """Contingency table as a heat map: clusters (rows, grouped by their class) against true labels.

    Up to ``CONFUSION_COUNTS_K`` clusters, every cell carries its count; beyond, the cells are too small
    for numbers and the colour (the share of the cluster's rows, with its colorbar) tells alone. More
    than ``CONFUSION_ROWS`` clusters are set in several columns side by side, so that every cluster's
    row keeps a legible label and the picture stays within about 3,000 x 1,600 pixels (k = 256: four
    columns of 64).
    """
    table = np.asarray(table)
    k, n_classes = table.shape
    order = np.lexsort((np.arange(k), cluster_to_class))  # clusters of the same class together
    shares = table[order] / np.maximum(table[order].sum(axis=1, keepdims=True), 1)
    counts = k <= CONFUSION_COUNTS_K and n_classes <= 20  # cells big enough to print their counts in
    labels = [f"#{order[i]} → {_class_name(cluster_to_class[order[i]], class_names)}" for i in range(k)]
    cell_w = 0.85 if counts else max(0.12, min(0.3, 8.0 / n_classes))  # inches
    label_w = 0.12 + 0.075 * max(map(len, labels))  # a 9-point label, inches
    panel_w = label_w + n_classes * cell_w + 0.15
    # Columns of clusters: as few as keep each under CONFUSION_ROWS rows, as many as fit 28 inches across.
    panels = max(1, min(math.ceil(k / CONFUSION_ROWS), int(26.0 // panel_w)))
    rows = math.ceil(k / panels)
    # Rows of at most 14 inches a column; at least 1.8 inches in all, or the colorbar beside them is unreadable.
    cell_h = max(min(0.42 if counts else 0.2, 14.0 / rows), 1.8 / rows)
    fontsize = 9 if cell_h >= 0.16 else 7  # a label every row while 9 points fit in one
    step = max(1, math.ceil(fontsize / 72 * 1.15 / cell_h))
    long_names = max(map(len, class_names)) > 2
    class_h = 0.1 + (0.065 * max(map(len, class_names)) * 0.71 if long_names else 0.15)  # rotated 45°
    fig = Figure(figsize=(panels * panel_w + 1.2, rows * cell_h + class_h + 1.1), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for p, ax in enumerate(axes):
        part = slice(p * rows, min(k, (p + 1) * rows))
        # The last column's rows keep the others' height (extent): its blank end is plain paper.
        image = ax.imshow(shares[part], cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest",
                          extent=(-0.5, n_classes - 0.5, part.stop - 0.5, part.start - 0.5))
        ax.set_ylim(p * rows + rows - 0.5, p * rows - 0.5)
        ax.set_xticks(range(n_classes), class_names, rotation=45 if long_names else 0,
                      ha="right" if long_names else "center", fontsize=9, rotation_mode="anchor")
        ax.set_yticks(range(part.start, part.stop, step), labels[part][::step], fontsize=fontsize)
        ax.tick_params(length=2)
        ax.set_xlabel("true label", fontsize=10)
        if counts:
            for i in range(part.start, part.stop):
                for c in range(n_classes):
                    if table[order[i], c]:
                        ax.text(c, i, f"{table[order[i], c]:,}", ha="center", va="center", fontsize=9,
                                color="white" if shares[i, c] > 0.5 else "black")
    axes[0].set_ylabel("cluster → inferred label", fontsize=10)
    fig.colorbar(image, ax=list(axes), label="share of the cluster's rows", shrink=0.8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _class_name(index, class_names):
    return "∅" if index < 0 else class_names[index]


def _iteration_axis(ax, iterations):
    """Whole iterations on the x axis, with room around a lone one (not ticks at 0.96, 0.98...)."""
    if len(iterations) < 3:  # (the integer locator wants two whole numbers in view before it keeps to them)
        ax.set_xticks(iterations)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    ax.set_xlim(iterations[0] - 0.5 - len(iterations) / 40, iterations[-1] + 0.5 + len(iterations) / 40)
    ax.set_xlabel("iteration", fontsize=10)


def plot_convergence(history, path, tol=None):
    """How a fit converged: the inertia's excess over its final value, and the squared center shift against tol.

    Both on log axes: the inertia itself is flat after a few iterations on
    a linear one, while its excess keeps falling by orders of magnitude.
    A fit of one iteration says so in the left panel; beyond 50 iterations
    the points are drawn as a line alone (300 markers made a thick band).
    """
    iterations = np.array([h["iteration"] for h in history])
    inertia = np.array([h["inertia"] for h in history], dtype=np.float64)
    marker = "." if len(history) <= 50 else None
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    excess = (inertia - inertia[-1]) / inertia[-1]
    shown = excess > 0
    if shown.any():
        ax1.semilogy(iterations[shown], excess[shown], marker=marker, lw=1)
    else:  # one iteration, or an inertia that never fell: no excess to draw on a log axis
        ax1.set_yticks([])
        ax1.text(0.5, 0.5, "one iteration: nothing to compare" if len(history) == 1 else
                 "the inertia never fell below its first value", transform=ax1.transAxes, ha="center",
                 va="center", fontsize=10, color="0.35")
    ax1.set_ylabel("(inertia − final) / final", fontsize=10)
    ax1.set_title(f"inertia above its final value ({inertia[-1]:.4g})", fontsize=10)
    shifts = [max(h["center_shift"], 1e-300) for h in history]
    ax2.semilogy(iterations, shifts, marker=marker or ".", markevery=None if marker else [len(shifts) - 1], lw=1,
                 color="tab:orange", label="squared center shift")
    if tol:
        ax2.axhline(tol, color="tab:red", ls="--", lw=1, label=f"tol = {tol:.3g}")
        ax2.legend(fontsize=9, loc="best")
    ax2.set_ylabel("squared center shift", fontsize=10)
    ax2.set_title("the fit stops once the shift is at most tol", fontsize=10)
    for ax in (ax1, ax2):
        _iteration_axis(ax, iterations)
        # One style of label ("1e+05"), never mathtext's 10^5, whose first use costs ~0.6 s.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0e}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=9)
        ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(rows, path):
    """Elbow: inertia against k, and accuracy (train, test) and NMI against k.

    Every k swept is a point and a tick; its number is written where it does
    not run into its neighbour's (on a log axis 10, 12 and 16 crowd: 255 ks
    made one black smudge).
    """
    ks = [r["k"] for r in rows]
    marker = "o" if len(ks) <= 30 else None
    fig = Figure(figsize=(10, 3.6))  # (an inch wider than the convergence: room for 8, 10 and 16 on the k axis)
    ax1, ax2 = fig.subplots(1, 2, sharex=True)  # (the scores' panel spans the same ks, drawn or not)
    ax1.plot(ks, [r["inertia"] for r in rows], marker=marker)
    ax1.set_ylabel("inertia (training rows)", fontsize=10)
    ax1.set_title("inertia against k (elbow)", fontsize=10)
    for key, label in (("train_accuracy", "train accuracy"), ("test_accuracy", "test accuracy"), ("nmi", "NMI")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax2.plot(ks, [np.nan if v is None else v for v in values], marker=marker, label=label)
    ax2.set_ylim(0, 1)
    ax2.set_title("scores against k", fontsize=10)
    if ax2.lines:
        ax2.legend(fontsize=9, loc="best")
    else:
        ax2.text(0.5, 0.5, "no true labels: no scores", transform=ax2.transAxes, ha="center", va="center",
                 fontsize=10, color="0.35")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("k", fontsize=10)
        ax.minorticks_off()
        ax.tick_params(labelsize=9)
        ax.set_xticks(ks, [str(k) for k in ks])
    fig.tight_layout()
    for ax in (ax1, ax2):
        labelled = _uncrowded(ax, ks, fontsize=9)
        ax.set_xticks(labelled, [str(k) for k in labelled])
        if len(ks) <= 30:  # the others: a tick without a number (hundreds of them make a black band)
            ax.set_xticks(sorted(set(ks) - set(labelled)), minor=True)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _uncrowded(ax, ks, fontsize):
    """The ks whose numbers fit along the x axis without touching (the first and the last always)."""
    ks = sorted(set(ks))
    lo, hi = (math.log(v) for v in ax.get_xlim())
    width = ax.get_window_extent().width  # pixels, at the figure's dpi (that of the PNG)
    x = [(math.log(k) - lo) / ((hi - lo) or 1) * width for k in ks]
    char = fontsize * 0.64 / 72 * DPI  # a digit's width, pixels (DejaVu Sans: 0.64 em)

    def apart(i, j):
        return abs(x[j] - x[i]) >= (len(str(ks[i])) + len(str(ks[j]))) / 2 * char + 4

    kept = [0]
    for i in range(1, len(ks)):
        if apart(kept[-1], i):
            kept.append(i)
    if kept[-1] != len(ks) - 1:  # the largest k is labelled, at the cost of the one before it
        while len(kept) > 1 and not apart(kept[-1], len(ks) - 1):
            kept.pop()
        kept.append(len(ks) - 1)
    return [ks[i] for i in kept]


def plot_palette(palette, shares, path):
    """The colours of a quantised image as swatches, widest for the most used.

    A strip of swatches as wide as their share of the pixels, each labelled
    with its hex code and share where it is wide enough. When some are too
    narrow (a few pixels each among 256 colours), a grid below names every
    colour, in the same order, 16 a row (k=256: ~1,650 x 1,000 pixels).
    """
    palette = np.asarray(palette)
    shares = np.asarray(shares, dtype=np.float64)
    k = len(palette)
    order = np.argsort(-shares, kind="stable")
    strip_in = min(16.0, max(6.0, 0.9 * k))
    # Each swatch at least a few pixels wide, so that a rare colour is still seen (1 % of the strip up to k=25).
    widths = np.maximum(shares[order], min(0.01, 0.25 / k))
    widths = widths / widths.sum()
    named = widths * strip_in >= 0.7  # room for the hex code and the share
    cols = min(k, 16)
    grid_rows = 0 if named.all() else math.ceil(k / cols)
    cell_h, title_in, strip_h = 0.55, 0.35, 1.1  # inches
    height = title_in + strip_h + (0.15 + grid_rows * cell_h if grid_rows else 0.0)
    fig = Figure(figsize=(strip_in, height))
    ax = fig.add_axes((0, (height - title_in - strip_h) / height, 1, strip_h / height))
    left = 0.0
    for j, width, name in zip(order, widths, named):
        # White edges part the swatches while they are wide; among hundreds they would hide the thin ones.
        ax.barh(0, width, left=left, color=palette[j] / 255.0, height=1, edgecolor="white",
                linewidth=1 if k <= 32 else 0)
        if name:
            _swatch_label(ax, left + width / 2, 0, palette[j], shares[j])
        left += width
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, 0.5)
    ax.set_axis_off()
    ax.set_title(f"{k} colours, width = share of pixels" + ("; every colour below, in that order" if grid_rows else ""),
                 fontsize=10)
    if grid_rows:
        grid = fig.add_axes((0, 0, 1, grid_rows * cell_h / height))
        for i, j in enumerate(order):
            r, c = divmod(i, cols)
            grid.add_patch(Rectangle((c + 0.04, r + 0.06), 0.92, 0.88, color=palette[j] / 255.0))
            _swatch_label(grid, c + 0.5, r + 0.5, palette[j], shares[j])
        grid.set_xlim(0, cols)
        grid.set_ylim(grid_rows, 0)
        grid.set_axis_off()
    return _save(fig, path)


def _swatch_label(ax, x, y, colour, share):
    """Hex code and share of the pixels on a swatch, in black or white as the swatch is light or dark."""
    ink = "black" if np.asarray(colour, dtype=np.float64) @ [0.299, 0.587, 0.114] > 140 else "white"
    if share >= 0.095:
        percent = f"{share:.0%}"
    elif share >= 0.0005:
        percent = f"{share:.1%}"
    else:
        percent = "<0.1%" if share > 0 else "0%"
    ax.text(x, y, "#{:02x}{:02x}{:02x}\n{}".format(*(int(v) for v in colour), percent), ha="center", va="center",
            fontsize=9, color=ink, family="monospace")
