"""Downloading MNIST when its files are not at hand, from a real HTTP server on 127.0.0.1.

The server serves the official files that come with the repository under
``/good/``, and broken copies of them under other prefixes: ``/corrupt/`` (the
right length, wrong bytes), ``/truncated/`` (a Content-Length larger than the
body, then the connection closes), ``/stall/`` (half the body, then silence)
and ``/missing/`` (HTTP 404). distkm is pointed at it, and kept away from the
shipped files and the user's cache, with its own config keys only.
"""

import collections
import os
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dask
import numpy as np
import pytest

from distkm.cli import main
from distkm.io.datasets import DATASETS, SHIPPED_MNIST, DownloadError, download_idx, ingest_idx, md5sum, read_idx
from distkm.io.stores import open_store
from tests.helpers import DISTKM

NAMES = sorted(f for files in DATASETS["mnist"].splits.values() for f in files)
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"


class Mirror:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) in a thread, counting the requests for every path."""

    def __init__(self):
        self.files = {name: (SHIPPED_MNIST / name).read_bytes() for name in NAMES}
        self.hits = collections.Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        # A short poll interval: shutdown() waits for the next poll.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def url(self, kind):
        return f"http://127.0.0.1:{self.server.server_port}/{kind}/"

    def total_hits(self):
        with self.lock:
            return sum(self.hits.values())

    def _handler(self):
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with mirror.lock:
                    mirror.hits[self.path] += 1
                kind, _, name = self.path.strip("/").partition("/")
                data = mirror.files.get(name)
                if data is None or kind == "missing":
                    self.send_error(404)
                    return
                if kind == "corrupt":  # the same length, every byte flipped
                    data = bytes(b ^ 0xFF for b in data[:4096]) + data[4096:]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if kind in ("truncated", "stall"):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    if kind == "stall":  # neither more bytes nor a closed connection, until the test ends
                        mirror.stop.wait(10)
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def mirror():
    with Mirror() as mirror:
        yield mirror


@pytest.fixture
def refused():
    """The URL of a port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def settings(tmp_path, *mirrors, timeout="5s"):
    """distkm config that hides the shipped files, caches under tmp_path and downloads from ``mirrors``."""
    return {"distkm.data-dirs.mnist": [], "distkm.data-cache": str(tmp_path / "cache"),
            "distkm.mirrors.mnist": list(mirrors), "distkm.download-timeout": timeout}


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_ingest_downloads_from_the_first_mirror(tmp_path, mirror, capsys):
    out = tmp_path / "mnist.zarr"
    with dask.config.set(settings(tmp_path, mirror.url("good"), mirror.url("missing"))):
        assert main(["ingest", "mnist", "--out", str(out)]) == 0
    cache = tmp_path / "cache" / "mnist"
    assert listing(cache) == NAMES
    assert dict(mirror.hits) == {f"/good/{name}": 1 for name in NAMES}  # the second mirror was never needed
    err = capsys.readouterr().err
    assert f"distkm: mnist: 4 of its 4 files not found locally; downloading them into {cache}\n" in err
    assert f"distkm: downloaded {TRAIN_IMAGES} (9.9 MB) from {mirror.url('good')} into {cache}\n" in err

    store = open_store(out)
    assert store.images.shape == (70000, 784) and store.attrs["splits"] == {"train": [0, 60000], "test": [60000, 70000]}
    assert store.attrs["source"]["folder"] == str(cache.resolve())
    assert store.attrs["source"]["md5"] == DATASETS["mnist"].md5
    test_images = read_idx(SHIPPED_MNIST / "t10k-images-idx3-ubyte.gz").reshape(10000, 784)
    np.testing.assert_array_equal(store.images[60000:].compute(), test_images)


@pytest.mark.parametrize("bad, reason", [
    ("missing", "HTTP 404 Not Found"),
    ("corrupt", "checksum mismatch (MD5 "),
    ("truncated", "truncated (4,956,211 of 9,912,422 bytes)"),
    ("stall", "truncated (no answer within 0.5 s after "),
    ("refused", "connection refused"),
])
def test_a_bad_mirror_is_followed_by_the_next_and_leaves_nothing(tmp_path, mirror, refused, caplog, bad, reason):
    bad_url = refused if bad == "refused" else mirror.url(bad)
    with dask.config.set(settings(tmp_path, bad_url, mirror.url("good"), timeout="0.5s")), caplog.at_level("INFO"):
        folder = download_idx("mnist")
    assert folder == tmp_path / "cache" / "mnist"
    assert listing(folder) == NAMES  # no partial, truncated or corrupt file beside them
    assert {name: md5sum(folder / name) for name in NAMES} == DATASETS["mnist"].md5
    assert f"(after {bad_url}{TRAIN_IMAGES}: {reason}" in caplog.text
    # The good mirror, once it answered, is asked first for the other files.
    assert mirror.hits[f"/{bad}/{TRAIN_IMAGES}"] == (bad != "refused")
    assert sum(n for path, n in mirror.hits.items() if path.startswith(f"/{bad}/")) == (bad != "refused")


def test_all_mirrors_failing_is_one_line_and_no_store(tmp_path, mirror, refused):
    out, cache = tmp_path / "mnist.zarr", tmp_path / "cache" / "mnist"
    urls = [mirror.url("missing"), mirror.url("corrupt"), mirror.url("truncated"), refused]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           # The same settings as dask config environment variables, as a user would set them in a job script.
           "DASK_DISTKM__DATA_DIRS__MNIST": "[]", "DASK_DISTKM__DATA_CACHE": str(tmp_path / "cache"),
           "DASK_DISTKM__MIRRORS__MNIST": repr(urls), "DASK_DISTKM__DOWNLOAD_TIMEOUT": "5s"}
    result = subprocess.run([DISTKM, "ingest", "mnist",
                             "--out", str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    # What it set out to do, then the failure in one line.
    assert len(lines) == 2, result.stderr
    assert lines.pop(0) == f"distkm: mnist: 4 of its 4 files not found locally; downloading them into {cache}"
    assert lines[0].startswith(f"distkm: error: could not download {TRAIN_IMAGES} of mnist: {urls[0]}{TRAIN_IMAGES}: "
                               f"HTTP 404 Not Found; {urls[1]}{TRAIN_IMAGES}: checksum mismatch (MD5 ")
    assert f"; {urls[2]}{TRAIN_IMAGES}: truncated (4,956,211 of 9,912,422 bytes); " in lines[0]
    assert f"; {urls[3]}{TRAIN_IMAGES}: connection refused; pass --source DIR" in lines[0]
    assert listing(tmp_path) == ["cache"]  # no store, no temporary store
    assert listing(cache) == []  # no partial or corrupt download


def test_cached_files_are_used_without_downloading(tmp_path, mirror, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default cache: $XDG_CACHE_HOME/distkm/mnist
    config = {**settings(tmp_path, mirror.url("good")), "distkm.data-cache": None}
    with dask.config.set(config):
        cache = download_idx("mnist")
        assert cache == tmp_path / "xdg" / "distkm" / "mnist" and listing(cache) == NAMES
        assert mirror.total_hits() == 4
        mirror.hits.clear()
        download_idx("mnist")
        assert mirror.total_hits() == 0

        # A cached file that lost its checksum is downloaded again, that one only.
        (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
        download_idx("mnist")
        assert dict(mirror.hits) == {"/good/t10k-labels-idx1-ubyte.gz": 1}
        assert md5sum(cache / "t10k-labels-idx1-ubyte.gz") == DATASETS["mnist"].md5["t10k-labels-idx1-ubyte.gz"]

        mirror.hits.clear()
        attrs = ingest_idx("mnist", tmp_path / "mnist.zarr")
    assert mirror.total_hits() == 0
    assert attrs["source"]["folder"] == str(cache.resolve()) and attrs["splits"]["train"] == [0, 60000]


def test_source_folder_is_used_as_it_is_and_never_downloads(tmp_path, mirror):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):  # the .gz files alone, no MD5SUMS
        shutil.copy(SHIPPED_MNIST / name, source / name)
    with dask.config.set(settings(tmp_path, mirror.url("good"))):
        attrs = ingest_idx("mnist", tmp_path / "t.zarr", source=source)
        assert attrs["splits"] == {"test": [0, 10000]}
        with pytest.raises(FileNotFoundError, match=f"looked in '{tmp_path / 'empty'}'"):
            ingest_idx("mnist", tmp_path / "u.zarr", source=tmp_path / "empty")
    assert mirror.total_hits() == 0 and not (tmp_path / "cache").exists()


def test_no_mirror_says_where_the_files_were_looked_for(tmp_path):
    message = r"looked in no folder \(distkm.data-dirs.mnist is empty\) .*; pass source=DIR"
    with dask.config.set(settings(tmp_path)), pytest.raises(FileNotFoundError, match=message):
        ingest_idx("mnist", tmp_path / "out.zarr")
    assert listing(tmp_path) == []


def test_fashion_mnist_downloads_are_checked_against_the_upstream_checksums(tmp_path, mirror):
    # The mirror serves MNIST's files under Fashion-MNIST's names: they must not pass.
    config = {"distkm.data-dirs.fashion-mnist": [], "distkm.data-cache": str(tmp_path / "cache"),
              "distkm.mirrors.fashion-mnist": [mirror.url("good")]}
    with dask.config.set(config), pytest.raises(DownloadError, match="expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        ingest_idx("fashion-mnist", tmp_path / "f.zarr")
    assert listing(tmp_path / "cache" / "fashion-mnist") == [] and not (tmp_path / "f.zarr").exists()
