"""Augmented stores: hand-checkable distortions, determinism across clusters, resume after a kill."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from distkm import KMeans
from distkm.apps.augment import augment_store
from distkm.io.outputs import partial_path
from distkm.io.stores import open_store, write_store
from distkm.kernels.distort import Distortions, distort, random_distortions
from tests.helpers import DISTKM


@pytest.fixture(scope="module")
def digits(mnist_test):
    return mnist_test[0][:200].reshape(-1, 28, 28), mnist_test[1][:200]


def test_neutral_distortion_returns_the_original(digits):
    images, _ = digits
    assert np.array_equal(distort(images, Distortions.neutral(len(images))), images)


def test_integer_shift_and_quarter_turn_are_exact(digits):
    images, _ = digits
    p = Distortions.neutral(len(images))
    p.shift[:, 1] = 3  # three pixels to the right
    expected = np.zeros_like(images)
    expected[:, :, 3:] = images[:, :, :-3]
    assert np.array_equal(distort(images, p), expected)
    p = Distortions.neutral(len(images))
    p.angle[:] = np.pi / 2  # counter-clockwise, as displayed
    assert np.array_equal(distort(images, p), np.rot90(images, 1, axes=(1, 2)))


def test_colour_channels_share_the_geometry(digits):
    images, _ = digits
    rgb = np.stack([images, images // 2, 255 - images], axis=-1)
    p = random_distortions(np.random.default_rng(0), len(images), (28, 28))
    out = distort(rgb, p)
    assert np.array_equal(out[..., 0], distort(images, p))
    assert np.array_equal(out[..., 1], distort(images // 2, p))


def test_distorted_digits_stay_close_to_their_source(digits):
    images, _ = digits
    out = distort(images, random_distortions(np.random.default_rng(1), len(images), (28, 28)))
    a = images.reshape(len(images), -1).astype(float)
    b = out.reshape(len(out), -1).astype(float)
    own = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]
    other = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, np.roll(b, 1, axis=0))]
    assert np.median(own) > 0.5 > np.median(other)
    assert not np.array_equal(out, images)


def store_bytes(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def test_same_bytes_on_one_or_two_workers(tmp_path, client, mnist_test_store):
    kwargs = dict(n=16000, seed=7, chunk_rows=2000, progress=False)
    augment_store(mnist_test_store, tmp_path / "two.zarr", **kwargs)
    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as one, \
            Client(one):
        augment_store(mnist_test_store, tmp_path / "one.zarr", **kwargs)
    two, one = store_bytes(tmp_path / "two.zarr"), store_bytes(tmp_path / "one.zarr")
    assert two.keys() == one.keys() and len(two) > 20
    assert all(two[k] == one[k] for k in two)


def test_store_content_labels_follow_images(tmp_path, client, mnist_test_store, mnist_test):
    X, y = mnist_test
    augment_store(mnist_test_store, tmp_path / "a.zarr", n=13000, chunk_rows=1500, progress=False)
    store = open_store(tmp_path / "a.zarr")
    images, labels = store.images.compute(), store.labels.compute()
    index = zarr.open_array(tmp_path / "a.zarr" / "source_index", mode="r")[...]
    assert store.attrs["complete"] is True and store.attrs["splits"] == {"original": [0, 10000],
                                                                        "augmented": [10000, 13000]}
    assert np.array_equal(images[:10000], X) and np.array_equal(index[:10000], np.arange(10000))
    assert np.array_equal(labels, y[index])
    aug, src = images[10000:].astype(float), X[index[10000:]].astype(float)
    corr = [np.corrcoef(a, s)[0, 1] for a, s in zip(aug[:300], src[:300])]
    assert np.median(corr) > 0.5


def test_killed_generation_resumes_to_the_same_bytes(tmp_path, client, mnist_test_store):
    out = tmp_path / "big.zarr"
    argv = [DISTKM, "augment", str(mnist_test_store), "--n", "60000",
            "--chunk-rows", "500", "--no-originals", "--seed", "3", "--out", str(out), "--n-workers", "2", "--quiet"]
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunk_dir = partial_path(out) / "images" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and (not chunk_dir.exists() or len(list(chunk_dir.iterdir())) < 15):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers, mid-generation
    proc.wait()
    written = len(list(chunk_dir.iterdir()))
    assert 15 <= written < 120 and not out.exists()
    # What zarr leaves of a chunk write killed before its rename (the kill above may or may not land there)
    (min(chunk_dir.iterdir()) / "0.0123456789abcdef0123456789abcdef.partial").write_bytes(b"half a chunk")
    with pytest.raises(ValueError, match="is incomplete .* run the `distkm augment` command that was writing it again"):
        KMeans(10).fit(partial_path(out))
    result = subprocess.run(argv[:-1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resumed with" in result.stdout and not partial_path(out).exists()
    augment_store(mnist_test_store, tmp_path / "ref.zarr", n=60000, chunk_rows=500, originals=False, seed=3,
                  progress=False)
    resumed, reference = store_bytes(out), store_bytes(tmp_path / "ref.zarr")
    assert resumed.keys() == reference.keys()
    assert all(resumed[k] == reference[k] for k in resumed)


def test_source_without_labels(tmp_path, client, mnist_test):
    write_store(tmp_path / "nolabels.zarr", mnist_test[0][:3000], None, {"image_shape": [28, 28]}, chunk_rows=1000)
    augment_store(tmp_path / "nolabels.zarr", tmp_path / "out.zarr", n=5000, chunk_rows=1000, progress=False)
    store = open_store(tmp_path / "out.zarr")
    assert store.labels is None and store.images.shape == (5000, 784)


@pytest.mark.parametrize("n, message", [(0, "^n must be a positive number of rows, got 0"),
                                        (-5, "^n must be a positive number of rows")])
def test_bad_row_count(tmp_path, mnist_test_store, n, message):
    with pytest.raises(ValueError, match=message):
        augment_store(mnist_test_store, tmp_path / "out.zarr", n=n)
    assert not (tmp_path / "out.zarr").exists() and not partial_path(tmp_path / "out.zarr").exists()


def test_declared_shape_must_match_row_width(tmp_path, mnist_test):
    write_store(tmp_path / "s.zarr", mnist_test[0][:100], None, {"image_shape": [28, 29]}, chunk_rows=100)
    with pytest.raises(ValueError, match="rows have 784 values, but the declared image shape 28x29 has 812"):
        augment_store(tmp_path / "s.zarr", tmp_path / "out.zarr", n=200)


def test_unwritable_out(tmp_path, mnist_test_store):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        augment_store(mnist_test_store, tmp_path / "a-file" / "out.zarr", n=200)


def test_existing_complete_store_needs_overwrite(tmp_path, client, mnist_test_store):
    augment_store(mnist_test_store, tmp_path / "o.zarr", n=1000, chunk_rows=500, progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        augment_store(mnist_test_store, tmp_path / "o.zarr", n=2000, progress=False)
    augment_store(mnist_test_store, tmp_path / "o.zarr", n=2000, chunk_rows=500, overwrite=True, progress=False)
    assert open_store(tmp_path / "o.zarr").images.shape == (2000, 784)


@pytest.mark.slow
def test_fit_on_200k_augmented_rows_with_1gib_workers(tmp_path, mnist_store):
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1GiB", host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        augment_store(mnist_store, tmp_path / "aug200k.zarr", n=200_000, split="train", progress=False)
        workers = set(client.scheduler_info()["workers"])
        model = KMeans(10, random_state=0, max_iter=30).fit(tmp_path / "aug200k.zarr")
        assert set(client.scheduler_info()["workers"]) == workers  # no worker was restarted
    # 200,000 rows generated from train, then MNIST's 10,000 test rows carried over
    assert model.cluster_sizes_.sum() == 210_000 and (model.cluster_sizes_ > 0).all()
    assert np.bincount(model.labels_.compute(), minlength=10).tolist() == model.cluster_sizes_.tolist()
    assert 0 < model.inertia_ < np.inf


def test_text_from_a_store_is_never_printed_raw(tmp_path, mnist_test, capsys):
    """An interrupted store's attributes (an old distkm wrote a resume command there) and its split names
    reach the terminal escaped, and the advice comes from distkm, not from the store."""
    import zarr

    from distkm.cli import main

    x, y = mnist_test
    store = tmp_path / "evil.zarr"
    write_store(store, x[:100], y[:100], {"splits": {"tr\x1b[2Jain": [0, 100]}}, chunk_rows=50)
    assert main(["fit", str(store), "--split", "test", "--k", "2", "--out", str(tmp_path / "r"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "tr\\x1b[2Jain" in err, err
    group = zarr.open_group(store, mode="r+")
    group.attrs["distkm"] = {**group.attrs["distkm"], "complete": False, "augment": {"n": 100},
                             "resume_command": "\x1b]0;owned\x07 rm -rf ~"}
    assert main(["fit", str(store), "--k", "2", "--out", str(tmp_path / "r"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "rm -rf" not in err and "run the `distkm augment` command" in err, err


def test_a_store_augmented_from_train_keeps_train_and_carries_test_over(tmp_path, client, mnist_test):
    """augment --split train: fit on train, score on the untouched held-out test rows (the obvious commands)."""
    from distkm.cli import main

    x, y = mnist_test
    source = tmp_path / "source.zarr"
    write_store(source, x[:3000], y[:3000], {"image_shape": [28, 28], "splits": {"train": [0, 2500],
                                                                                  "test": [2500, 3000]}},
                chunk_rows=400)
    out = tmp_path / "aug.zarr"
    augment_store(source, out, n=4100, seed=1, split="train", chunk_rows=1000, progress=False)
    store = open_store(out)
    assert store.attrs["splits"] == {"train": [0, 4100], "test": [4100, 4600]}
    np.testing.assert_array_equal(store.images[4100:].compute(), x[2500:3000])  # the test rows, untouched
    np.testing.assert_array_equal(store.labels[4100:].compute(), y[2500:3000])
    np.testing.assert_array_equal(store.images[:2500].compute(), x[:2500])  # originals first
    index = zarr.open_array(out / "source_index", mode="r")[...]
    assert index[:4100].max() < 2500 and (index[4100:] == np.arange(2500, 3000)).all()  # train drawn from train
    run = tmp_path / "run"
    assert main(["fit", str(out), "--split", "train", "--k", "5", "--seed", "0", "--out", str(run), "--quiet",
                 "--no-pictures", "--n-workers", "1"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert set(evaluation["splits"]) == {"train", "test"} and evaluation["mapping_split"] == "train"
    assert evaluation["splits"]["test"]["rows"] == 500 and evaluation["splits"]["train"]["rows"] == 4100
