"""Ingest of the shipped IDX files into zarr v3 stores, and opening stores."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from distkm.io.datasets import DATASETS, ingest_idx, md5sum, read_idx
from distkm.io.stores import open_store
from tests.helpers import MNIST_DIR


def test_mnist_store_layout(mnist_store):
    group = zarr.open_group(mnist_store, mode="r")
    assert group.metadata.zarr_format == 3
    images, labels = group["images"], group["labels"]
    assert images.shape == (70000, 784) and images.dtype == np.uint8 and images.chunks == (10000, 784)
    assert labels.shape == (70000,) and labels.dtype == np.uint8
    attrs = group.attrs["distkm"]
    assert attrs["complete"] is True
    assert attrs["splits"] == {"train": [0, 60000], "test": [60000, 70000]}
    assert attrs["image_shape"] == [28, 28]
    # The official checksums (published with the dataset), written out here to check the built-in ones.
    assert attrs["source"]["md5"] == {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                                      "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                                      "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                                      "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}


def test_store_content_equals_idx_files(mnist_store):
    test = open_store(mnist_store, split="test")
    raw = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
    np.testing.assert_array_equal(test.images.compute().ravel(), np.frombuffer(raw, np.uint8))
    raw_labels = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:]
    np.testing.assert_array_equal(test.labels.compute(), np.frombuffer(raw_labels, np.uint8))
    assert open_store(mnist_store, split="train").images.shape == (60000, 784)


def test_chunk_rows_is_configurable(tmp_path):
    ingest_idx("mnist", tmp_path / "m.zarr", source=MNIST_DIR, chunk_rows=4096)
    assert zarr.open_array(tmp_path / "m.zarr" / "images", mode="r").chunks == (4096, 784)


def test_second_ingest_refused_unless_overwrite(tmp_path):
    out = tmp_path / "m.zarr"
    ingest_idx("mnist", out, source=MNIST_DIR, chunk_rows=20000)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ingest_idx("mnist", out, source=MNIST_DIR)
    ingest_idx("mnist", out, source=MNIST_DIR, chunk_rows=35000, overwrite=True)
    assert zarr.open_array(out / "images", mode="r").chunks == (35000, 784)


def copy_source(tmp_path, only=None):
    src = tmp_path / "src"
    src.mkdir()
    for f in MNIST_DIR.glob("*.gz"):
        if only is None or f.name in only:
            shutil.copy(f, src / f.name)
    return src


def test_only_the_splits_present_are_ingested(tmp_path):
    src = copy_source(tmp_path, only={"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"})
    ingest_idx("mnist", tmp_path / "t.zarr", source=src)  # the .gz files alone: the checksums are built in
    store = open_store(tmp_path / "t.zarr")
    assert store.attrs["splits"] == {"test": [0, 10000]} and store.images.shape == (10000, 784)


def test_corrupt_file_fails_checksum_and_leaves_nothing(tmp_path):
    src = copy_source(tmp_path)
    data = bytearray((src / "t10k-labels-idx1-ubyte.gz").read_bytes())
    data[-20] ^= 0xFF
    (src / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch for .*t10k-labels"):
        ingest_idx("mnist", tmp_path / "out.zarr", source=src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    raw = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    path.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(ValueError, match="header says 10000"):
        read_idx(path)
    path.write_bytes((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()[:2000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        read_idx(path)


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"looked in '{tmp_path}'"):
        ingest_idx("mnist", tmp_path / "out.zarr", source=tmp_path)
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed (.ci/run installs it)")
def test_fashion_mnist_from_debian_package(tmp_path):
    out = tmp_path / "fashion.zarr"
    ingest_idx("fashion-mnist", out)
    store = open_store(out)
    assert store.images.shape == (70000, 784)
    assert store.attrs["source"]["checksums"] == DATASETS["fashion-mnist"].fallback_checksums
    assert store.attrs["source"]["md5"]["t10k-images-idx3-ubyte.gz"] == md5sum(
        "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
    assert sorted(np.unique(store.labels.compute())) == list(range(10))


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no zarr store at"),
    (lambda p: zarr.open_group(p, mode="w").create_array("pixels", shape=(4, 2), dtype="u1"), "has no 'images' array"),
    (lambda p: zarr.open_group(p, mode="w").create_array("images", shape=(4, 2, 2), dtype="u1"), "must be 2-D"),
    (lambda p: zarr.open_group(p, mode="w").create_array("images", shape=(0, 2), dtype="u1"), "holds no rows"),
    (lambda p: zarr.open_group(p, mode="w", attributes={"distkm": {"complete": False}}), "incomplete"),
])
def test_bad_stores_are_refused(tmp_path, make, message):
    path = tmp_path / "bad.zarr"
    make(path)
    with pytest.raises((ValueError, FileNotFoundError, TypeError), match=message):
        open_store(path)


def test_an_output_that_appears_meanwhile_is_never_clobbered(tmp_path):
    from distkm.io.outputs import atomic_output, replace_path

    with pytest.raises(FileExistsError, match="appeared while writing; nothing was replaced"):
        with atomic_output(tmp_path / "out") as tmp:
            (tmp / "new").write_text("new")
            (tmp_path / "out").mkdir()  # someone else's output, created while we wrote ours
            (tmp_path / "out" / "theirs").write_text("theirs")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # our temporary folder is gone
    (tmp_path / "src").mkdir()
    with pytest.raises(FileExistsError):
        replace_path(tmp_path / "src", tmp_path / "out")
    with pytest.raises(FileExistsError, match="not an output of distkm"):  # overwrite replaces only distkm's own
        replace_path(tmp_path / "src", tmp_path / "out", overwrite=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["theirs"]
    (tmp_path / "out" / "model.json").write_text('{"format": "distkm-model"}')  # a run folder of distkm's
    replace_path(tmp_path / "src", tmp_path / "out", overwrite=True)
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / "src").exists()
