"""Failures injected for real: killed workers, a killed `distkm fit`, damaged stores, full or read-only disks."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import dask
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from distkm import KMeans
from distkm.apps.augment import augment_store
from distkm.cli import main
from distkm.cluster.client import dask_client, report_lost_workers
from distkm.engine.final import write_labels
from distkm.io.outputs import partial_path
from distkm.io.stores import write_store
from tests.helpers import DISTKM


@pytest.fixture(scope="module")
def fine_store(tmp_path_factory, mnist_store):
    """MNIST 70k in chunks of 1,000 rows: 70 tasks per pass, so a pass lasts long enough to be hit."""
    x = zarr.open_array(mnist_store / "images", mode="r")[...]
    y = zarr.open_array(mnist_store / "labels", mode="r")[...]
    path = tmp_path_factory.mktemp("data") / "fine.zarr"
    write_store(path, x, y, {"image_shape": [28, 28]}, chunk_rows=1000)
    return path


@pytest.fixture
def fragile_cluster():
    """Two worker processes under nannies (a killed worker is restarted), with lost-worker reporting."""
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client, report_lost_workers(client):
        yield client


def kill_a_worker(client):
    pid = next(iter(client.run(os.getpid).values()))
    os.kill(pid, signal.SIGKILL)
    return pid


def kill_when(condition, client, timeout=120):
    """Kill a worker from a thread as soon as ``condition()`` holds; return the thread and what it saw."""
    seen = {}

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                seen["pid"] = kill_a_worker(client)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, seen


def test_worker_killed_in_iteration_3_changes_nothing(fragile_cluster, fine_store, tmp_path, caplog):
    reference = KMeans(10, random_state=0, max_iter=10, tol=0).fit(fine_store)
    ckpt = tmp_path / "ckpt" / "checkpoint.json"

    def in_iteration_3():
        try:
            return json.loads(ckpt.read_text())["iteration"] == 2
        except (OSError, ValueError):
            return False

    thread, seen = kill_when(in_iteration_3, fragile_cluster)
    with caplog.at_level("WARNING", logger="distkm"):
        disturbed = KMeans(10, random_state=0, max_iter=10, tol=0, checkpoint=tmp_path / "ckpt").fit(fine_store)
    thread.join()
    assert "pid" in seen, "the worker was not killed"
    assert disturbed.n_iter_ == 10
    assert disturbed.cluster_centers_.tobytes() == reference.cluster_centers_.tobytes()
    assert disturbed.inertia_ == reference.inertia_
    assert any("lost" in r.getMessage() and "rerun" in r.getMessage() for r in caplog.records)


def test_worker_killed_while_writing_labels(fragile_cluster, fine_store, tmp_path):
    model = KMeans(10, random_state=0, max_iter=3).fit(fine_store)
    write_labels(tmp_path / "ref.zarr", model.labels_)
    chunk_dir = tmp_path / "labels.zarr" / "c"  # 70 label chunks: kill once 5 are written
    written_at_kill = []

    def mid_pass():
        count = len(os.listdir(chunk_dir)) if chunk_dir.exists() else 0
        if count >= 5:
            written_at_kill.append(count)
        return count >= 5

    thread, seen = kill_when(mid_pass, fragile_cluster)
    write_labels(tmp_path / "labels.zarr", model.predict(fine_store))
    thread.join()
    assert "pid" in seen and written_at_kill[0] < 70  # killed during the pass, not after it
    ref = zarr.open_array(tmp_path / "ref.zarr", mode="r")[...]
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "labels.zarr", mode="r")[...], ref)


def test_worker_killed_during_augment(fragile_cluster, mnist_test_store, tmp_path):
    kwargs = dict(n=30000, chunk_rows=500, originals=False, seed=5, progress=False)
    augment_store(mnist_test_store, tmp_path / "ref.zarr", **kwargs)
    chunk_dir = partial_path(tmp_path / "hit.zarr") / "images" / "c"
    thread, seen = kill_when(lambda: chunk_dir.exists() and len(os.listdir(chunk_dir)) >= 5, fragile_cluster)
    augment_store(mnist_test_store, tmp_path / "hit.zarr", **kwargs)
    thread.join()
    assert "pid" in seen
    files = sorted(p.relative_to(tmp_path / "ref.zarr") for p in (tmp_path / "ref.zarr").rglob("*") if p.is_file())
    assert all((tmp_path / "ref.zarr" / f).read_bytes() == (tmp_path / "hit.zarr" / f).read_bytes() for f in files)


def fit_argv(store, out, *extra):
    return [DISTKM, "fit", str(store), "--k", "10", "--seed", "0", "--max-iter", "15", "--tol", "0",
            "--out", str(out), "--n-workers", "2", "--quiet", *extra]


def wait_for_iteration(out, n, timeout=120):
    """Wait until the checkpoint of the fit building ``out`` has ``n`` iterations; returns its path."""
    ckpt = partial_path(out) / "checkpoint" / "checkpoint.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads(ckpt.read_text())["iteration"] >= n:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return ckpt


def test_killed_fit_resumes_bit_identical(fine_store, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(fit_argv(fine_store, out), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = wait_for_iteration(out, 4)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its LocalCluster
    proc.wait()
    killed_at = json.loads(ckpt.read_text())["iteration"]
    assert 4 <= killed_at < 15 and not out.exists()

    again = subprocess.run(fit_argv(fine_store, out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "holds an interrupted fit; continue it with --resume" in again.stderr
    other = subprocess.run([*fit_argv(fine_store, out, "--resume")[:4], "12", *fit_argv(fine_store, out)[5:],
                            "--resume"], capture_output=True, text=True, timeout=300)
    assert other.returncode == 1 and "cannot resume" in other.stderr and "n_clusters (10 then, 12 now)" in other.stderr

    resumed = subprocess.run(fit_argv(fine_store, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not partial_path(out).exists()
    meta = json.loads((out / "model.json").read_text())
    assert meta["n_iter"] == 15 and [h["iteration"] for h in meta["history"]] == list(range(1, 16))
    with dask.config.set(scheduler="sync"):
        reference = KMeans(10, random_state=0, max_iter=15, tol=0).fit(fine_store)
    centers = zarr.open_array(out / "centroids.zarr", mode="r")[...]
    assert centers.tobytes() == reference.cluster_centers_.tobytes()
    np.testing.assert_array_equal(zarr.open_array(out / "labels.zarr", mode="r")[...], reference.labels_.compute())


def test_checkpoints_with_several_inits_resume_identically(client, mnist_test_store, tmp_path):
    """n_init=3 (the RNG state and the best run live in the checkpoint): resume from every iteration."""
    full = KMeans(5, init="random", n_init=3, random_state=1, max_iter=6, tol=0,
                  checkpoint=tmp_path / "full").fit(mnist_test_store)
    final = json.loads((tmp_path / "full" / "checkpoint.json").read_text())
    assert final["run"] == 2 and final["converged"] and final["iteration"] == 6
    # Stop after each iteration of the second run by raising from the checkpoint writer, then resume.
    from distkm.io import checkpoint as ck

    original = ck.Checkpoint.save
    for stop_at in (1, 4, 6):

        def interrupted(self, state, stop_at=stop_at):
            original(self, state)
            if state.run == 1 and len(state.history) == stop_at:
                raise KeyboardInterrupt

        ck.Checkpoint.save = interrupted
        try:
            with pytest.raises(KeyboardInterrupt):
                KMeans(5, init="random", n_init=3, random_state=1, max_iter=6, tol=0,
                       checkpoint=tmp_path / f"s{stop_at}").fit(mnist_test_store)
        finally:
            ck.Checkpoint.save = original
        resumed = KMeans(5, init="random", n_init=3, random_state=1, max_iter=6, tol=0,
                         checkpoint=tmp_path / f"s{stop_at}").fit(mnist_test_store)
        assert resumed.cluster_centers_.tobytes() == full.cluster_centers_.tobytes()
        assert resumed.inertia_ == full.inertia_


def damaged_stores(tmp_path, mnist_test_store):
    for name in ("missing", "corrupt", "short"):
        shutil.copytree(mnist_test_store, tmp_path / f"{name}.zarr")
    os.remove(tmp_path / "missing.zarr" / "images" / "c" / "3" / "0")
    (tmp_path / "corrupt.zarr" / "images" / "c" / "4" / "0").write_bytes(b"\x00" * 100)
    group = zarr.open_group(tmp_path / "short.zarr", mode="r+")
    group.attrs["distkm"] = {**group.attrs["distkm"], "splits": {"test": [0, 12000]}}
    write_store(tmp_path / "one.zarr", np.ones((1, 4), np.uint8), None, {}, chunk_rows=1)
    zarr.open_group(tmp_path / "strings.zarr", mode="w").create_array("images", shape=(3, 2), dtype=str)


@pytest.mark.parametrize("store, k, message", [
    ("missing", 3, "is damaged: 1 chunk(s) missing, the first is chunk 3 (rows 3000-3999)"),
    ("corrupt", 3, "cannot read chunk 4 (rows 4000-4999)"),
    ("short", 3, "declares splits up to row 12000, but images has 10000 rows"),
    ("one", 2, "n_samples=1 should be >= n_clusters=2."),
    ("strings", 2, "must hold real numbers"),
])
def test_damaged_or_unusable_stores(tmp_path, capsys, mnist_test_store, store, k, message):
    damaged_stores(tmp_path, mnist_test_store)
    before = sorted(os.listdir(tmp_path))
    code = main(["fit", str(tmp_path / f"{store}.zarr"), "--k", str(k), "--out", str(tmp_path / "out"),
                 "--n-workers", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("distkm: error: ") and err.count("\n") == 1, err
    assert message in err
    assert sorted(os.listdir(tmp_path)) == before


def test_a_single_row_store_fits_with_k_1(tmp_path, client):
    write_store(tmp_path / "one.zarr", np.array([[1, 2, 3, 4]], np.uint8), None, {}, chunk_rows=1)
    model = KMeans(1).fit(tmp_path / "one.zarr")
    np.testing.assert_array_equal(model.cluster_centers_, [[1, 2, 3, 4]])
    assert model.inertia_ == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs of our own (root in the CI sandbox can mount one)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_while_writing_labels(tmpfs, mnist_store, tmp_path, capsys):
    """70,000 labels (~68 KiB compressed) onto a 32 KiB file system: ENOSPC mid-write."""
    assert main(["fit", str(mnist_store), "--k", "10", "--seed", "0", "--max-iter", "2", "--out",
                 str(tmp_path / "run"), "--n-workers", "1", "--quiet"]) == 0
    subprocess.run(["mount", "-o", "remount,size=32k", str(tmpfs)], check=True)
    capsys.readouterr()
    code = main(["predict", str(tmp_path / "run"), str(mnist_store), "--out", str(tmpfs / "labels.zarr"),
                 "--n-workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err, err
    assert os.listdir(tmpfs) == []  # no labels.zarr, no temporary folder left behind


def test_read_only_output_folder(tmpfs, mnist_test_store, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    code = main(["fit", str(mnist_test_store), "--k", "3", "--out", str(tmpfs / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "is not writable" in err and err.count("\n") == 1


def tiled_store(path, source, n_chunks):
    """A store of ``n_chunks`` copies of the source's first chunk: hard links to its encoded chunk file
    (the same bytes to decode, without writing gigabytes to disk)."""
    x = zarr.open_array(source / "images", mode="r")
    rows = x.chunks[0]
    write_store(path, x[:rows], zarr.open_array(source / "labels", mode="r")[:rows], {"image_shape": [28, 28]},
                chunk_rows=rows)
    group = zarr.open_group(path, mode="r+")
    for name in ("images", "labels"):
        group[name].resize((rows * n_chunks,) + group[name].shape[1:])
    for name, key in (("images", "c/0/0"), ("labels", "c/0")):
        first = path / name / key
        for i in range(1, n_chunks):
            target = path / name / key.replace("/0", f"/{i}", 1)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(first, target)
    return rows * n_chunks


@pytest.mark.slow
def test_store_ten_times_the_workers_memory(tmp_path, mnist_store):
    """2 workers at 400 MiB (800 MiB in all) fit an 8.6 GB (raw) store: no restart, bounded memory."""
    import psutil

    limit = 400 * 2**20
    n = tiled_store(tmp_path / "big.zarr", mnist_store, n_chunks=1100)
    assert n * 784 > 10 * 2 * limit
    init = zarr.open_array(mnist_store / "images", mode="r")[:10].astype(np.float64)
    with dask.config.set({"distkm.local-cluster.dashboard-address": None}), \
            dask_client(n_workers=2, threads_per_worker=1, memory_limit=limit) as client:
        workers = set(client.scheduler_info()["workers"])
        peak, done = [0], threading.Event()

        def sample():
            while not done.is_set():
                rss = client.run(lambda: psutil.Process().memory_info().rss)
                peak[0] = max(peak[0], max(rss.values()))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        model = KMeans(10, init=init, max_iter=2, tol=0).fit(tmp_path / "big.zarr")
        done.set()
        sampler.join()
        assert set(client.scheduler_info()["workers"]) == workers  # no worker died or was restarted
    print(f"\n{n:,} rows ({n * 784 / 1e9:.1f} GB raw), "
          f"worker peak RSS {peak[0] / 2**20:.0f} MiB of {limit / 2**20:.0f}")
    assert peak[0] < limit
    assert model.cluster_sizes_.sum() == n and model.n_iter_ == 2
    # Every chunk is the same chunk: the sizes are those of one chunk, times the number of chunks.
    one = KMeans(10, init=init, max_iter=2, tol=0).fit(zarr.open_array(mnist_store / "images", mode="r")[:10000])
    np.testing.assert_array_equal(model.cluster_sizes_, one.cluster_sizes_ * 1100)


def test_fit_killed_after_its_model_is_saved_resumes_to_the_same_run(fine_store, tmp_path):
    """Killed while evaluating or drawing (model.json already in OUT.partial): --resume finishes it."""
    out = tmp_path / "run"
    argv = [DISTKM, "fit", str(fine_store), "--k", "10", "--seed", "0", "--max-iter", "6", "--tol", "0",
            "--out", str(out), "--n-workers", "2", "--quiet"]
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    model_json = partial_path(out) / "model.json"
    deadline = time.time() + 120
    while time.time() < deadline and not model_json.exists() and proc.poll() is None:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert model_json.exists() and not out.exists(), "the fit ended before it could be killed after its model"

    resumed = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not partial_path(out).exists()
    reference = tmp_path / "reference"
    reference_argv = [str(reference) if a == str(out) else a for a in argv]
    assert subprocess.run(reference_argv, capture_output=True, timeout=300).returncode == 0
    for name in ("centroids.zarr/c/0/0", "labels.zarr/c/0"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((out / "evaluation.json").read_text())["splits"] == \
        json.loads((reference / "evaluation.json").read_text())["splits"]


@pytest.mark.parametrize("command", ["augment", "fit"])
def test_a_second_command_on_the_same_output_is_refused_and_the_first_finishes(mnist_test_store, tmp_path,
                                                                                command):
    out = tmp_path / "out.zarr" if command == "augment" else tmp_path / "run"
    if command == "augment":
        argv = [DISTKM, "augment", str(mnist_test_store), "--n", "40000", "--out", str(out), "--n-workers", "1",
                "--quiet"]
    else:
        argv = [DISTKM, "fit", str(mnist_test_store), "--k", "10", "--seed", "0", "--max-iter", "300", "--tol", "0",
                "--out", str(out), "--n-workers", "1", "--quiet"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not partial_path(out).exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.01)
    # The first command (its cluster too) is held still while the second runs, so on a busy machine it
    # cannot finish first: the second must meet it at work, which is what is tested.
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, first_err = first.communicate(timeout=600)
    assert second.returncode == 1, second.stderr
    assert second.stderr.strip() == f"distkm: error: another distkm command is writing {str(out)!r} right now; " \
                                    "wait for it to end (or stop it) and try again", second.stderr
    assert first.returncode == 0, first_err
    assert out.exists() and not partial_path(out).exists()


def test_a_memory_limit_below_what_a_worker_uses_is_refused_not_a_hang(mnist_test_store, tmp_path, capsys):
    """Workers of 3 MiB are paused by dask before their first task: every computation would wait for good."""
    code = main(["fit", str(mnist_test_store), "--k", "3", "--out", str(tmp_path / "run"),
                 "--n-workers", "2", "--memory-limit", "3MiB", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("distkm: error: --memory-limit must be more than a worker uses before any data: "
                          "it is 3.00 MiB a worker, its process already uses "), err
    assert "dask pauses a worker above 80% of its limit" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_cache_yes_on_data_the_workers_cannot_hold_is_refused_up_front(mnist_test_store, tmp_path, capsys):
    """7.8 MB of rows on two workers of 3 MiB: said at once, not after four KilledWorkers.

    Workers this small would be paused by dask (the test above); with pausing off they run.
    """
    with dask.config.set({"distributed.worker.memory.pause": False}):
        code = main(["fit", str(mnist_test_store), "--k", "3", "--out", str(tmp_path / "run"), "--cache", "yes",
                     "--n-workers", "2", "--memory-limit", "3MiB", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "--cache: the data (7.48 MiB) cannot be held in the workers' memory (6.00 MiB in all)" in err, err
    assert not (tmp_path / "run.partial").exists()


def test_a_full_disk_while_checkpointing_is_one_line(tmpfs, mnist_test_store, capsys):
    """The checkpoint of a k=256 fit (1.6 MB of centers a file) onto a 600 KiB file system."""
    code = main(["fit", str(mnist_test_store), "--k", "256", "--seed", "0", "--max-iter", "3",
                 "--out", str(tmpfs / "run"), "--n-workers", "1", "--quiet", "--no-evaluate", "--no-pictures"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot write the checkpoint in" in err and "free some and resume" in err, err
    assert err.count("distkm: error:") == 1 and "Traceback" not in err, err


def test_the_scheduler_dying_mid_fit_is_said_in_one_line(fine_store, tmp_path):
    from tests.services import dask_processes

    out = tmp_path / "run"
    with dask_processes(2, log_dir=tmp_path) as address:
        with Client(address, set_as_default=False) as client:
            scheduler_pid = client.run_on_scheduler(os.getpid)
        proc = subprocess.Popen([DISTKM, "fit", str(fine_store), "--k", "10", "--seed", "0", "--max-iter", "60",
                                 "--tol", "0", "--out", str(out), "--scheduler", address, "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_iteration(out, 2)
        os.kill(scheduler_pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=180)
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert lines[-1].startswith("distkm: error: lost the Dask scheduler"), err
    assert lines[:-1] == [f"distkm: the fit so far is kept in {partial_path(out)}; run the same command with "
                          "--resume to continue"], err


def test_a_corrupt_chunk_is_the_one_line_and_nothing_else(tmp_path, mnist_test_store):
    damaged_stores(tmp_path, mnist_test_store)
    for workers in ("1", "2"):  # workers as threads (small data), and as processes
        env = {**os.environ, "DASK_DISTKM__LOCAL_CLUSTER__PROCESSES": "true" if workers == "2" else "auto"}
        result = subprocess.run([DISTKM, "fit", str(tmp_path / "corrupt.zarr"), "--k", "3", "--out",
                                 str(tmp_path / "out"), "--n-workers", workers, "--quiet"],
                                capture_output=True, text=True, timeout=180, env=env)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [result.stderr.strip()] and \
            "cannot read chunk 4 (rows 4000-4999)" in result.stderr, result.stderr
