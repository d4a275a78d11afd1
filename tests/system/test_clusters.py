"""The job scripts on real clusters: LocalCluster, `dask scheduler` + `dask worker` processes, TLS, SLURM.

Every cluster must give bit-identical centroids for the same job (the
combine tree is fixed by the chunking, the seed by the job). The SSH and
Kubernetes configs cannot run here: their cluster objects' arguments and
manifest are built and checked without starting anything.
"""

import gc
import inspect
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from distributed import Client
from distributed.security import Security

from distkm.cluster.configs import kubernetes_cluster_spec, load_cluster_config, ssh_cluster_kwargs
from tests.helpers import ROOT, distkm
from tests.services import dask_processes, make_certificates, slurm

# No distkm-partial-stats-combine: the fit caches its 8 training chunks as one block (distkm-cache), one task a pass.
# No distkm-labels: the final pass writes the labels of the training rows and tabulates their evaluation; only
# the held-out rows have an evaluation pass of their own.
PREFIXES = {"distkm-read", "distkm-cache", "distkm-summary", "distkm-partial-stats", "distkm-final-pass",
            "distkm-evaluation"}


def run_job(store, out, *cluster, timeout=600):
    """jobs/mnist_k10.py on a small store; returns (centroid bytes, wall seconds, completed process)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, ROOT / "jobs" / "mnist_k10.py", "--store", store, "--out", out,
                             "--max-iter", "8", *map(str, cluster)], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    centroids = zarr.open_array(Path(out) / "centroids.zarr", mode="r")[...]
    return centroids.tobytes(), seconds, result


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory, mnist_store):
    """MNIST with train (first 8,000) and test (last 2,000) splits, in 1,000-row chunks: quick jobs."""
    from distkm.io.stores import open_store, write_store

    store = open_store(mnist_store)
    x = np.concatenate([store.images[:8000].compute(), store.images[60000:62000].compute()])
    y = np.concatenate([store.labels[:8000].compute(), store.labels[60000:62000].compute()])
    path = tmp_path_factory.mktemp("data") / "small-mnist.zarr"
    write_store(path, x, y, {"splits": {"train": [0, 8000], "test": [8000, 10000]}, "image_shape": [28, 28]},
                chunk_rows=1000)
    return path


@pytest.fixture(scope="module")
def local_job(small_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs") / "local"
    return run_job(small_mnist, out), out


def test_job_on_a_local_cluster_writes_run_and_performance_report(local_job):
    (centroids, seconds, result), out = local_job
    assert "Dask dashboard: http://127.0.0.1:" in result.stdout.splitlines()[1]  # after the `$ distkm fit` line
    report = (out / "performance-report.html").read_text()
    assert "distkm-partial-stats" in report and "distkm-read" in report  # task names in the task stream
    assert "cdn.bokeh.org" not in report  # mode="inline": opens offline
    meta = json.loads((out / "model.json").read_text())
    assert meta["data"]["split"] == "train" and meta["n_iter"] == 8
    assert json.loads((out / "evaluation.json").read_text())["splits"]["test"]["rows"] == 2000


def test_job_exits_non_zero_on_failure(tmp_path):
    result = subprocess.run([sys.executable, ROOT / "jobs" / "mnist_k10.py", "--store", tmp_path / "none.zarr",
                             "--out", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:1"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    # the store is missing, so the job ingests MNIST first, then cannot reach the scheduler
    assert result.returncode == 1
    assert "cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'" in result.stderr
    assert "job failed: `distkm fit` exited with 1" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_job_on_dask_scheduler_and_worker_processes(local_job, small_mnist, tmp_path):
    (expected, local_seconds, _), _ = local_job
    with dask_processes(2, log_dir=tmp_path) as address:
        centroids, seconds, result = run_job(small_mnist, tmp_path / "run", "--scheduler", address)
        assert centroids == expected  # bit-identical to the LocalCluster run
        with Client(address) as client:
            prefixes = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))
            events = [e for _, e in client.get_events("distkm") if e.get("kind") == "iteration"]
            page = urllib.request.urlopen(client.dashboard_link.replace("/status", "/distkm")).read().decode()
    # the dashboard shows distkm's own task names, not fused or generic ones
    assert PREFIXES <= prefixes, sorted(prefixes)
    helpers = {"distkm-summary-combine", "distkm-final-pass-combine", "distkm-partial-stats-args",
               "distkm-summary-args", "distkm-final-pass-args", "distkm-evaluation-args", "distkm-partial-stats-result",
               "distkm-summary-result", "distkm-final-pass-result", "distkm-evaluation-result",
               "distkm-evaluation-combine", "distkm-read-getitem"}
    assert not {p for p in prefixes if p.startswith("distkm") and p not in PREFIXES | helpers}, sorted(prefixes)
    history = json.loads((tmp_path / "run" / "model.json").read_text())["history"]
    assert [e["inertia"] for e in events] == [h["inertia"] for h in history]
    assert f"iteration 8: inertia {history[-1]['inertia']:.6g}" in page
    print(f"\nwall time of the job: LocalCluster {local_seconds:.1f} s, dask scheduler + 2 workers {seconds:.1f} s")


def test_job_over_tls_and_a_client_without_certificates_is_refused(local_job, small_mnist, tmp_path):
    (expected, local_seconds, _), _ = local_job
    certs = make_certificates(tmp_path / "certs")
    node_cert, node_key = certs["scheduler"]
    started = time.perf_counter()
    with dask_processes(2, tls={"ca": certs["ca"], "cert": node_cert, "key": node_key}, log_dir=tmp_path) as address:
        assert address.startswith("tls://")
        config = tmp_path / "tls.yaml"
        shipped = yaml.safe_load((ROOT / "cluster-configs" / "tls.yaml").read_text())
        shipped["tls"].update({"scheduler": address, "ca-file": "certs/ca.pem", "cert": "certs/client.pem",
                               "key": "certs/client-key.pem"})  # relative to the config file
        config.write_text(yaml.safe_dump(shipped))
        with Client(address, security=_security(certs["ca"], *certs["client"]), timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        up_seconds = time.perf_counter() - started
        centroids, seconds, _ = run_job(small_mnist, tmp_path / "run", "--cluster-config", config)
        assert centroids == expected
        # No certificate, or one from another CA: refused. Not as the default client, and collected at once:
        # a refused Client is only closed by its __del__, which must not run inside the next Client's start
        # (it waited there for minutes) nor leave the default scheduler set (it did, after this test).
        with pytest.raises((OSError, TypeError, ValueError)):
            Client(address, timeout=5, set_as_default=False)
        gc.collect()
        stranger = make_certificates(tmp_path / "stranger", names=("client",))
        with pytest.raises(OSError):
            Client(address, security=_security(stranger["ca"], *stranger["client"]), timeout=5, set_as_default=False)
        gc.collect()
        # the CLI says what is missing
        refused = distkm("fit", small_mnist, "--k", 2, "--out", tmp_path / "x", "--scheduler", address)
        assert refused.returncode == 1 and "needs TLS certificates" in refused.stderr
        # ... and that a client certificate comes from another CA, in one line
        shipped["tls"].update({"ca-file": "stranger/ca.pem", "cert": "stranger/client.pem",
                               "key": "stranger/client-key.pem"})
        (tmp_path / "stranger.yaml").write_text(yaml.safe_dump(shipped))
        refused = distkm("fit", small_mnist, "--k", 2, "--out", tmp_path / "x", "--cluster-config",
                         tmp_path / "stranger.yaml")
        assert refused.returncode == 1 and "the TLS handshake with" in refused.stderr, refused.stderr
        assert refused.stderr.count("distkm: error:") == 1 and "Traceback" not in refused.stderr
    print(f"\nTLS cluster up in {up_seconds:.1f} s; job {seconds:.1f} s (LocalCluster {local_seconds:.1f} s)")


def _security(ca, cert, key):
    return Security(tls_ca_file=str(ca), tls_client_cert=str(cert), tls_client_key=str(key), require_encryption=True)


@pytest.mark.slurm
def test_job_on_slurm_workers(local_job, small_mnist, tmp_path):
    (expected, local_seconds, _), _ = local_job
    with slurm(tmp_path / "slurm") as info:
        shipped = yaml.safe_load((ROOT / "cluster-configs" / "slurm.yaml").read_text())
        shipped["slurm"].update({"cores": 1, "memory": "2GiB", "jobs": 2, "walltime": "00:20:00",
                                 "python": sys.executable, "local-directory": str(tmp_path / "scratch"),
                                 "log-directory": str(tmp_path / "logs"), "wait-timeout": "180s",
                                 "dashboard-address": "127.0.0.1:0"})
        config = tmp_path / "slurm.yaml"
        config.write_text(yaml.safe_dump(shipped))
        centroids, seconds, result = run_job(small_mnist, tmp_path / "run", "--cluster-config", config)
        assert centroids == expected
        assert "#SBATCH" in result.stderr  # the job script distkm submitted, logged
    logs = sorted((tmp_path / "logs").glob("*.err"))
    assert len(logs) >= 2  # two SLURM jobs ran the workers
    assert any("Starting established connection" in p.read_text() or "Registered to" in p.read_text()
               for p in logs)
    print(f"\nSLURM up in {info['startup_seconds']:.1f} s; job on SLURM workers {seconds:.1f} s "
          f"(LocalCluster {local_seconds:.1f} s)")


# --------------------------------------------------------------------------- #
# configs that cannot run here: checked by building what they describe
# --------------------------------------------------------------------------- #
def test_ssh_config_gives_valid_sshcluster_arguments():
    from distributed import SSHCluster

    kind, section = load_cluster_config(ROOT / "cluster-configs" / "ssh.yaml")
    kwargs = ssh_cluster_kwargs(section)
    inspect.signature(SSHCluster).bind(**kwargs)  # raises on an unknown argument
    assert kind == "ssh" and kwargs["hosts"] == ["node0", "node1", "node2"]
    assert kwargs["worker_options"]["nthreads"] == 2 and kwargs["worker_options"]["memory_limit"] == "8GiB"
    assert kwargs["worker_options"]["env"]["MALLOC_MMAP_THRESHOLD_"] == "33554432"
    assert kwargs["scheduler_options"] == {"port": 8786, "dashboard_address": "127.0.0.1:8787"}
    from distributed import Nanny

    inspect.signature(Nanny).bind("tcp://x:1", **{k: v for k, v in kwargs["worker_options"].items()
                                                  if k != "n_workers"})


def test_kubernetes_config_renders_the_operator_manifest():
    kind, section = load_cluster_config(ROOT / "cluster-configs" / "kubernetes.yaml")
    spec = kubernetes_cluster_spec(section)
    assert kind == "kubernetes" and spec["kind"] == "DaskCluster" and spec["metadata"]["name"] == "distkm"
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 4
    container = worker["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/example/distkm:0.1.0"
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MALLOC_TRIM_THRESHOLD_"] == "16777216"
    for role in ("scheduler", "worker"):  # the object store's credentials come from a Secret, not from the file
        assert spec["spec"][role]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "distkm-s3"}}]
    assert yaml.safe_load(yaml.safe_dump(spec)) == spec  # renders as YAML for kubectl


def test_shipped_slurm_config_renders_a_job_script():
    from dask_jobqueue import SLURMCluster

    from distkm.cluster.configs import slurm_cluster_kwargs

    _, section = load_cluster_config(ROOT / "cluster-configs" / "slurm.yaml")
    kwargs = slurm_cluster_kwargs(section)
    inspect.signature(SLURMCluster).bind(**kwargs)
    assert kwargs["python"] == sys.executable  # the venv's python, or the workers cannot import distributed
    assert "export MALLOC_MMAP_THRESHOLD_=33554432" in kwargs["job_script_prologue"]


# --------------------------------------------------------------------------- #
# the dashboard, in a real browser
# --------------------------------------------------------------------------- #
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.mark.browser
def test_dashboard_in_chromium_shows_a_running_distkm_job(small_mnist, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with dask_processes(2, log_dir=tmp_path) as address, Client(address) as client:
        status = client.dashboard_link
        job = subprocess.Popen([sys.executable, ROOT / "jobs" / "mnist_k10.py", "--store", small_mnist,
                                "--out", tmp_path / "run", "--scheduler", address, "--max-iter", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            while not any(e.get("kind") == "iteration" for _, e in client.get_events("distkm")):
                assert job.poll() is None and time.monotonic() < deadline, "the job never iterated"
                time.sleep(0.2)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(status)
                # Bokeh draws over a websocket after the page loads: wait for its canvases
                page.wait_for_selector("canvas", timeout=60_000)
                page.wait_for_timeout(3000)  # a few task-stream updates while the fit runs
                prefixes = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))
                page.screenshot(path=str(ARTIFACTS / "dashboard-status.png"))
                assert page.locator("canvas").count() >= 3  # task stream, progress, memory... panels
                assert "Dask" in page.title()
                page.goto(status.replace("/status", "/distkm"))
                text = page.inner_text("body")
                page.screenshot(path=str(ARTIFACTS / "dashboard-distkm.png"))
                browser.close()
        finally:
            out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-2000:]
    assert {"distkm-read", "distkm-summary", "distkm-partial-stats"} <= prefixes
    assert "distkm: iterations and inertia" in text and "iteration 1: inertia" in text
    assert (ARTIFACTS / "dashboard-status.png").stat().st_size > 20_000
