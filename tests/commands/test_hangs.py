"""Nothing hangs without a word: peers that are not Dask schedulers, within the scheduler timeout."""

import http.server
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from distkm.io.stores import write_store
from tests.helpers import DISTKM


@pytest.fixture
def store(tmp_path):
    x = np.random.RandomState(0).randint(0, 256, size=(300, 16)).astype(np.uint8)
    write_store(tmp_path / "s.zarr", x, None, {}, chunk_rows=100)
    return tmp_path / "s.zarr"


@pytest.fixture
def silent_listener():
    """A TCP server on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


@pytest.fixture
def http_server():
    """A plain HTTP server on 127.0.0.1: it answers, but not in Dask's protocol."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fit_against(store, address, tmp_path):
    out = tmp_path / "run"
    started = time.perf_counter()
    result = subprocess.run([DISTKM, "fit", str(store), "--k", "3", "--out", str(out), "--scheduler", address],
                            capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "DASK_DISTKM__SCHEDULER_TIMEOUT": "3s"})
    return result, time.perf_counter() - started, out


def test_a_listener_that_never_answers_is_named_within_the_timeout(store, silent_listener, tmp_path):
    result, seconds, out = fit_against(store, silent_listener, tmp_path)
    assert result.returncode == 1 and seconds < 30, (seconds, result.stderr)
    assert "accepts connections but no Dask scheduler answered there within 3 s" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert not out.exists() and not out.with_name("run.partial").exists()  # the retry is not blocked


def test_a_peer_that_is_not_a_dask_scheduler_is_named_as_such(store, http_server, tmp_path):
    result, seconds, out = fit_against(store, http_server, tmp_path)
    assert result.returncode == 1 and seconds < 30, (seconds, result.stderr)
    assert ("not as a Dask scheduler" in result.stderr or "no Dask scheduler answered" in result.stderr), result.stderr
    assert "MemoryError" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not out.with_name("run.partial").exists()


def test_metadata_that_claims_a_trillion_rows_is_refused_at_once(store, tmp_path):
    import json

    meta_path = store / "images" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"][0] = 10**12
    meta_path.write_text(json.dumps(meta))
    group = json.loads((store / "zarr.json").read_text())
    started = time.perf_counter()
    result = subprocess.run([DISTKM, "fit", str(store), "--k", "3", "--out", str(tmp_path / "run"), "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and time.perf_counter() - started < 60, result.stderr
    assert "is damaged: 9,999,999,997 chunk(s) missing, the first is chunk 3" in result.stderr, result.stderr
    assert json.loads((store / "zarr.json").read_text()) == group


def test_a_fit_on_a_cluster_without_workers_says_so_and_gives_up(store, caplog):
    """A scheduler with no worker: the fit says so, and gives up after distkm.no-workers-timeout."""
    import dask
    from distributed import Client, LocalCluster

    from distkm import KMeans

    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster), \
            dask.config.set({"distkm.no-workers-timeout": "3s"}):
        for cache in ("auto", False):  # deciding the cache, and a pass
            started = time.perf_counter()
            with pytest.raises(RuntimeError, match=r"the cluster has had no workers for \d+ s .*then resume"):
                KMeans(3, random_state=0, cache=cache).fit(store)
            assert time.perf_counter() - started < 30
    assert any("no workers" in r.getMessage() for r in caplog.records)
