"""Run reports, `distkm evaluate`, `distkm sweep` and `distkm quantize`, end to end through the CLI."""

import json
import shutil
from functools import partial

import numpy as np
import pytest
from PIL import Image

from distkm.io.stores import write_store
from tests.helpers import distkm

run = partial(distkm, check=True)  # a command that must succeed


def _png_size(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_fit_writes_scores_pictures_and_a_report(small_run):
    out, result = small_run
    evaluation = json.loads((out / "evaluation.json").read_text())
    meta = json.loads((out / "model.json").read_text())
    part = evaluation["splits"]["test"]
    assert part["rows"] == 10_000 and part["cluster_sizes"] == meta["cluster_sizes"]
    assert 0.45 < part["accuracy"] < 0.75 and 0.4 < part["nmi"] < 0.65  # k=10 on MNIST: ~0.6 and ~0.5
    assert part["inertia"] == pytest.approx(meta["inertia"], rel=1e-9)
    assert sum(map(sum, part["contingency"])) == 10_000
    # the terminal table and the report carry the same numbers as the JSON
    assert f"{part['accuracy']:.4f}" in result.stdout and f"{part['nmi']:.4f}" in result.stdout
    report = (out / "report.md").read_text()
    assert f"| test | 10,000 | {part['inertia'] / 10_000:.6g} | {part['accuracy']:.4f} |" in report
    assert f"{meta['n_iter']} iterations" in report
    for picture in ("centroids", "members", "confusion", "convergence"):
        assert f"(pictures/{picture}.png)" in report
    width, height = _png_size(out / "pictures" / "centroids.png")
    assert width > 600 and height > 100  # ten 28x28 digits side by side, readable
    width, height = _png_size(out / "pictures" / "members.png")
    assert width > 1200 and height > 300  # ten rows of 41 thumbnails
    _png_size(out / "pictures" / "confusion.png")
    _png_size(out / "pictures" / "convergence.png")
    assert "# distkm run `k10`" in report


def test_members_picture_shows_the_nearest_members(small_run, mnist_test):
    """The first thumbnail of each row is the member nearest its center: its pixels are in the picture's data."""
    from distkm.estimator import load_model
    from distkm.evaluation.evaluate import evaluate_store
    from distkm.evaluation.pictures import mosaic

    out, _ = small_run
    x, _ = mnist_test
    model, _ = load_model(out)
    labels = np.asarray(model.predict(x))
    dist = ((x.astype(np.float32) - model.cluster_centers_[labels]) ** 2).sum(axis=1)
    nearest = [np.flatnonzero(labels == j)[np.argmin(dist[labels == j])] for j in range(10)]
    import dask

    with dask.config.set(scheduler="sync"):
        from distkm.io.stores import open_store

        part = evaluate_store(model, open_store(json.loads((out / "model.json").read_text())["data"]["path"]),
                              n_members=3, silhouette_sample=0).splits["test"]
    np.testing.assert_array_equal(part.nearest.index[:, 0], nearest)
    tiles = part.nearest.rows.reshape(10, 3, 28, 28)
    image = mosaic(tiles, gap=2)
    assert image.shape == (10 * 30 - 2, 3 * 30 - 2)
    np.testing.assert_array_equal(image[30:58, 0:28], x[nearest[1]].reshape(28, 28))


def test_evaluate_a_run_on_a_store_with_train_and_test(small_run, mnist_store, tmp_path):
    out = tmp_path / "k10"
    shutil.copytree(small_run[0], out)  # evaluate rewrites the run's report: a copy of the shared one
    result = run("evaluate", out, "--data", mnist_store, "--n-workers", 2, "--silhouette-sample", 500,
                 "--no-pictures")
    lines = result.stdout.splitlines()
    assert any(line.startswith("train 60,000") for line in lines)
    assert any(line.startswith("test  10,000") for line in lines)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["mapping_split"] == "train" and evaluation["store"] == str(mnist_store)
    assert evaluation["splits"]["train"]["silhouette_sample"] == 500
    assert evaluation["splits"]["test"]["accuracy"] <= evaluation["splits"]["test"]["majority_accuracy"]


def test_evaluate_refuses_a_store_of_another_width(small_run, tmp_path):
    out, _ = small_run
    path = tmp_path / "narrow.zarr"
    write_store(path, np.zeros((100, 10), np.uint8), np.zeros(100, np.uint8), {}, chunk_rows=50)
    result = run("evaluate", out, "--data", path, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("has 10 features per row, but the model was fitted on 784")
    result = run("evaluate", tmp_path / "nothing", check=False)
    assert result.returncode == 1 and "is not a distkm run folder" in result.stderr


def test_non_image_data_gets_a_report_without_image_pictures(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(600, 5)) * 10 + 100).clip(0, 255).astype(np.uint8)
    path = tmp_path / "points.zarr"
    write_store(path, x, (np.arange(600) % 3).astype(np.uint8), {}, chunk_rows=200)
    out = tmp_path / "run"
    run("fit", path, "--k", 3, "--out", out, "--seed", 0, "--n-workers", 1)
    assert sorted(p.name for p in (out / "pictures").iterdir()) == ["confusion.png", "convergence.png"]
    report = (out / "report.md").read_text()
    assert "no image pictures: rows of 5 features are not images" in report


def test_many_clusters_give_pages_of_members(tmp_path, mnist_test_store):
    out = tmp_path / "k20"
    run("fit", mnist_test_store, "--k", 20, "--out", out, "--seed", 0, "--max-iter", 3, "--n-workers", 2)
    names = sorted(p.name for p in (out / "pictures").iterdir())
    assert names == ["centroids.png", "confusion.png", "convergence.png", "members-01.png", "members-02.png"]
    report = (out / "report.md").read_text()
    assert "(pictures/members-01.png)" in report and "(pictures/members-02.png)" in report


def test_fit_without_evaluation_or_pictures(tmp_path, mnist_test_store):
    out = tmp_path / "bare"
    run("fit", mnist_test_store, "--k", 3, "--out", out, "--seed", 0, "--max-iter", 3, "--n-workers", 1,
        "--no-evaluate", "--no-pictures")
    assert sorted(p.name for p in out.iterdir()) == ["centroids.zarr", "labels.zarr", "model.json", "report.md"]


# --------------------------------------------------------------------------- #
# distkm sweep
# --------------------------------------------------------------------------- #
def test_sweep_on_mnist_10k_gives_a_monotone_inertia(tmp_path, mnist_test_store):
    out = tmp_path / "sweep"
    result = run("sweep", mnist_test_store, "--k", "10,2", "--out", out, "--seed", 0, "--n-workers", 2,
                 "--silhouette-sample", 300)
    doc = json.loads((out / "sweep.json").read_text())
    rows = doc["rows"]
    assert [r["k"] for r in rows] == [2, 10]
    assert rows[0]["inertia"] > rows[1]["inertia"]
    assert rows[0]["train_accuracy"] < rows[1]["train_accuracy"]
    assert 0.15 < rows[0]["train_accuracy"] < 0.3  # the usual notebook results: ~0.2 at k=2, ~0.6 at k=10
    assert 0.45 < rows[1]["train_accuracy"] < 0.75
    for r in rows:  # each k's run folder holds the same fit
        meta = json.loads((out / f"k={r['k']:03d}" / "model.json").read_text())
        assert meta["inertia"] == r["inertia"] and meta["n_iter"] == r["n_iter"]
    csv = (out / "sweep.csv").read_text().splitlines()
    assert csv[0].startswith("k,inertia,train_accuracy,") and csv[1].startswith(f"2,{rows[0]['inertia']!r},")
    assert _png_size(out / "elbow.png")[0] > 500
    assert "| 2 |" in (out / "sweep.md").read_text()
    assert "test acc." not in result.stdout  # no held-out split in this store


def test_sweep_on_train_scores_the_test_split(tmp_path, mnist_store):
    out = tmp_path / "sweep"
    run("sweep", mnist_store, "--k", "3,4", "--out", out, "--seed", 0, "--n-workers", 2, "--max-iter", 4,
        "--silhouette-sample", 0, "--no-pictures")
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert all(r["test_split"] == "test" and 0 < r["test_accuracy"] < 1 for r in rows)
    meta = json.loads((out / "k=003" / "model.json").read_text())
    assert meta["data"]["split"] == "train" and meta["data"]["n_samples"] == 60_000
    assert not (out / "elbow.png").exists()


@pytest.mark.parametrize("ks, message", [("2,x", "comma-separated list of integers"),
                                         ("0,2", "positive integers"),
                                         ("2,20000", "n_samples=10000 should be >= n_clusters=20000")])
def test_sweep_bad_k(tmp_path, mnist_test_store, ks, message):
    result = run("sweep", mnist_test_store, "--k", ks, "--out", tmp_path / "s", "--n-workers", 1, check=False)
    assert result.returncode == 1 and message in result.stderr
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- #
# distkm quantize
# --------------------------------------------------------------------------- #
def _two_colour_image(path, shape=(300, 400)):
    image = np.empty((*shape, 3), dtype=np.uint8)
    image[:] = (250, 20, 30)
    image[shape[0] // 4: shape[0] // 2, shape[1] // 3:] = (10, 200, 90)
    Image.fromarray(image).save(path)
    return image


def test_quantize_two_colours_gives_back_exactly_those_colours(tmp_path):
    image = _two_colour_image(tmp_path / "flag.png")
    out = tmp_path / "flag-2.png"
    result = run("quantize", tmp_path / "flag.png", "--k", 2, "--out", out, "--n-workers", 2,
                 "--chunk-pixels", 7000)  # 18 chunks, the last one partial
    np.testing.assert_array_equal(np.asarray(Image.open(out)), image)
    palette = json.loads((tmp_path / "flag-2-palette.json").read_text())["colours"]
    assert sorted(tuple(c["rgb"]) for c in palette) == [(10, 200, 90), (250, 20, 30)]
    share = {c["hex"]: c["share"] for c in palette}
    assert share["#0ac85a"] == pytest.approx((75 * 267) / (300 * 400))
    assert _png_size(tmp_path / "flag-2-palette.png")[0] > 100
    assert "#fa141e" in result.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the pixel store is gone


def test_quantize_a_folder_with_one_palette(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    a = _two_colour_image(tmp_path / "in" / "a.png", (50, 60))
    b = np.full((30, 20, 3), (0, 0, 255), dtype=np.uint8)
    Image.fromarray(b).save(tmp_path / "in" / "sub" / "b.png")
    run("quantize", tmp_path / "in", "--k", 3, "--out", tmp_path / "out", "--n-workers", 1, "--chunk-pixels", 1000)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), a)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "sub" / "b.png")), b)
    palette = json.loads((tmp_path / "out" / "palette.json").read_text())["colours"]
    assert sorted(tuple(c["rgb"]) for c in palette) == [(0, 0, 255), (10, 200, 90), (250, 20, 30)]


def test_quantize_bad_input(tmp_path):
    _two_colour_image(tmp_path / "flag.png", (2, 2))
    cases = [(("quantize", tmp_path / "missing.png", "--k", 2, "--out", tmp_path / "o.png"), "no image or folder"),
             (("quantize", tmp_path / "flag.png", "--k", 5, "--out", tmp_path / "o.png"), "fewer than k=5"),
             (("quantize", tmp_path / "flag.png", "--k", 2, "--out", tmp_path / "o.txt"), "must name an image"),
             (("quantize", tmp_path / "flag.png", "--k", 2, "--out", tmp_path / "flag.png"), "is the input")]
    for args, message in cases:
        result = run(*args, "--n-workers", 1, check=False)
        assert result.returncode == 1 and message in result.stderr, result.stderr
    (tmp_path / "bad.png").write_text("not a png")
    result = run("quantize", tmp_path / "bad.png", "--k", 2, "--out", tmp_path / "o.png", "--n-workers", 1,
                 check=False)
    assert result.returncode == 1 and "cannot identify image file" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "flag.png"]


def _three_bands(height, width):
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = (30, 60, 90)
    image[: height // 3] = (200, 10, 10)
    image[:, : width // 5] = (240, 240, 240)
    return image


@pytest.mark.slow
def test_quantize_an_image_larger_than_a_worker_memory_limit(tmp_path):
    """A 360 MB image, workers limited to 300 MiB: the pixels stream through zarr, one chunk per task."""
    height, width = 10_000, 12_000
    Image.fromarray(_three_bands(height, width)).save(tmp_path / "big.png", compress_level=1)
    out = tmp_path / "big-3.png"
    result = run("quantize", tmp_path / "big.png", "--k", 3, "--out", out, "--n-workers", 2,
                 "--memory-limit", "300MiB")
    assert "lost" not in result.stderr  # no worker was killed for memory
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(out) as img:
        assert np.array_equal(np.asarray(img), _three_bands(height, width))  # exactly the three colours back


def test_report_wording_for_a_split_and_for_a_store_without_splits(tmp_path, mnist_test):
    """The title keeps the split outside the code span; a store without splits says 'of its rows'."""
    from distkm.cli import main

    x, y = mnist_test
    for name, attrs in (("split", {"splits": {"train": [0, 800], "test": [800, 1000]}}), ("whole", {})):
        store = tmp_path / f"{name}.zarr"
        write_store(store, x[:1000], y[:1000], {"image_shape": [28, 28], **attrs}, chunk_rows=500)
        argv = ["fit", str(store), "--k", "4", "--seed", "0", "--out", str(tmp_path / name), "--quiet",
                "--no-pictures", "--n-workers", "1"]
        assert main(argv + (["--split", "train"] if attrs else [])) == 0
    title = (tmp_path / "split" / "report.md").read_text().splitlines()[0]
    assert title.endswith("` (split train)") and "(split train)`" not in title, title
    whole = (tmp_path / "whole" / "report.md").read_text()
    assert "most frequent true class of its rows," in whole and "its all rows" not in whole
