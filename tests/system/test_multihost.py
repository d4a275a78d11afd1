"""Several hosts for real: a scheduler, two workers, an S3 server and a client, each in a network namespace.

Topology (every name carries this process's id, so runs side by side do not meet)::

    dkm-<pid>-br       bridge br0: one veth end per host below; no address; the root namespace is not on it
    dkm-<pid>-sched    10.213.7.2    dask scheduler (tcp, port 8786)
    dkm-<pid>-w1       10.213.7.11   dask worker (--nworkers 1 --nthreads 1)
    dkm-<pid>-w2       10.213.7.12   dask worker, killed (every process of the host) during the fit
    dkm-<pid>-s3       10.213.7.20   moto's S3 server (credentials checked, port 5000)
    dkm-<pid>-client   10.213.7.30   the client: ingests MNIST straight into S3, then fits through the scheduler

The test process itself stays in the root namespace and cannot reach any of them (nothing of
the test range is routed there): it only starts the processes (``ip netns exec``), reads their
logs, and kills the worker host. Its own LocalCluster fit of the same store, on local disk, is
the reference the hosts' fit must equal bit for bit, before and after a worker host dies.

The store exists only in the bucket: the client writes it there (``ingest_idx`` to an
``s3://`` URL, no local copy), the workers are told only its URL and the endpoint. All
processes run as root on one filesystem, so what is proven is that every chunk the fit needs
reaches the workers as an HTTP GET to the S3 server, from their own addresses (its request log
names the client address of each request).
"""

import base64
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from distkm import KMeans
from distkm.io.datasets import SHIPPED_MNIST, ingest_idx
from distkm.io.stores import open_store
from tests.helpers import random_rows
from tests.services import BIN, _stop, s3_server

pytestmark = pytest.mark.multihost

PREFIX = f"dkm-{os.getpid()}"
NET = "10.213.7"  # a /24 of the private 10/8 used only inside the namespaces below
HOSTS = {"sched": 2, "w1": 11, "w2": 12, "s3": 20, "client": 30}
SCHEDULER_PORT, S3_PORT = 8786, 5000
BUCKET = "distkm-multihost"
STORE = f"s3://{BUCKET}/mnist.zarr"
CHUNK_ROWS = 2000          # 35 chunks of MNIST's 70,000 rows: five cached blocks of 8 (distkm.split-every)
MAX_ITER, KILL_AFTER = 25, 3  # tol=0: 25 iterations unless the centers stop moving (they do not, here)


def ns(host):
    return f"{PREFIX}-{host}"


def address(host):
    return f"{NET}.{HOSTS[host]}"


def ip(*args, check=True):
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def netns_pids(name):
    result = ip("netns", "pids", name, check=False)
    return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


def our_namespaces():
    listing = ip("netns", "list", check=False).stdout
    return sorted(line.split()[0] for line in listing.splitlines() if line.startswith(PREFIX + "-"))


def multihost_unavailable():
    """Why namespaces cannot be made here, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"{PREFIX}-probe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    for module in ("s3fs", "moto"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test]')"
    return None


def _remove(names):
    for name in names:
        for pid in netns_pids(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    while any(netns_pids(name) for name in names) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in names:
        ip("netns", "del", name, check=False)  # its veth ends (and the bridge) go with it


@pytest.fixture
def hosts():
    """The namespaces, bridged; every one of them (and what runs in it) removed afterwards, even on failure."""
    reason = multihost_unavailable()
    if reason:
        if os.environ.get("DISTKM_REQUIRE_MULTIHOST") == "1":
            pytest.fail(f"multi-host test required (DISTKM_REQUIRE_MULTIHOST=1) but {reason}")
        pytest.skip(reason)
    # Namespaces left by a run whose process died before its teardown (its pid no longer runs).
    for line in ip("netns", "list", check=False).stdout.splitlines():
        match = re.match(r"dkm-(\d+)-", line)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _remove([line.split()[0]])
    names = [ns("br"), *map(ns, HOSTS)]
    try:
        bridge = ns("br")
        ip("netns", "add", bridge)
        ip("-n", bridge, "link", "set", "lo", "up")
        ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", bridge, "link", "set", "br0", "up")
        for host in HOSTS:
            ip("netns", "add", ns(host))
            ip("-n", ns(host), "link", "set", "lo", "up")
            # the pair is made in the host's namespace, its peer created straight in the bridge's: nothing
            # of it ever exists in the root namespace
            ip("-n", ns(host), "link", "add", "eth0", "type", "veth", "peer", "name", host, "netns", bridge)
            ip("-n", bridge, "link", "set", host, "master", "br0", "up")
            ip("-n", ns(host), "addr", "add", f"{address(host)}/24", "dev", "eth0")
            ip("-n", ns(host), "link", "set", "eth0", "up")
        yield
    finally:
        _remove(names)
        left = our_namespaces()
        assert not left, f"namespaces left behind: {left}"


def _tail(folder, lines=40):
    parts = []
    for log in sorted(Path(folder).glob("*.log")):
        text = log.read_text(errors="replace").splitlines()
        parts.append(f"--- {log.name} (last {min(lines, len(text))} of {len(text)} lines)\n" + "\n".join(text[-lines:]))
    return "\n".join(parts)


CLIENT = r'''
"""The client host: ingest MNIST into S3, then fit through the scheduler; prints progress lines and a JSON result."""
import base64, json, sys, time

import numpy as np
from distributed import Client

from distkm import KMeans
from distkm.io.datasets import SHIPPED_MNIST, ingest_idx

scheduler, store, init_file, max_iter, chunk_rows = sys.argv[1:6]


def say(*words):
    print(*words, flush=True)


ingest_idx("mnist", store, source=SHIPPED_MNIST, chunk_rows=int(chunk_rows))  # straight into the bucket
say("INGESTED")
init = np.load(init_file)
with Client(scheduler, timeout=60) as client:
    client.wait_for_workers(2, timeout=60)
    before = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    say("WORKERS", json.dumps(before))
    client.subscribe_topic("distkm", lambda event: event[1].get("kind") == "iteration"
                           and say("ITERATION", event[1]["iteration"]))
    model = KMeans(n_clusters=10, init=init, n_init=1, max_iter=int(max_iter), tol=0).fit(store)
    client.unsubscribe_topic("distkm")
    removed = [{"time": t, "worker": m["worker"], "expected": m.get("expected"),
                "processing": len(m.get("processing-tasks", ())), "lost": len(m.get("lost-computed-tasks", ()))}
               for t, m in client.get_events("all") if isinstance(m, dict) and m.get("action") == "remove-worker"]
    iterations = [[t, m["iteration"]] for t, m in client.get_events("distkm") if m.get("kind") == "iteration"]
    after = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    centers = np.ascontiguousarray(model.cluster_centers_)
    say("RESULT", json.dumps({
        "centers": base64.b64encode(centers.tobytes()).decode(), "dtype": str(centers.dtype),
        "shape": list(centers.shape), "n_iter": model.n_iter_, "inertia": model.inertia_,
        "workers_before": before, "workers_after": after, "removed": removed, "iterations": iterations}))
'''


def test_fit_across_hosts_through_s3_survives_a_dead_worker_host_bit_identical(hosts, tmp_path, client):
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.monotonic()

    with ExitStack() as stack:
        s3 = stack.enter_context(s3_server(logs, host=address("s3"), port=S3_PORT, netns=ns("s3"), bucket=BUCKET,
                                           client_netns=ns("client")))
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        s3_env = {**clean, **s3.environ()}
        scheduler = f"tcp://{address('sched')}:{SCHEDULER_PORT}"
        procs = []
        stack.callback(lambda: (_stop(procs[1:]), _stop(procs[:1])))
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns("sched"), BIN / "dask", "scheduler", "--host", address("sched"),
             "--port", str(SCHEDULER_PORT), "--dashboard-address", f"{address('sched')}:8787"],
            stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT,
            # worker-saturation as docs/clusters.md says; no work stealing: a cached block then stays on the
            # host that read it (stealing may copy one to the other host), so the blocks of the killed host
            # are lost for certain and must be read again from S3 by the other
            env={**clean, "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "inf",
                 "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING": "False"}))
        for host in ("w1", "w2"):
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns(host), BIN / "dask", "worker", scheduler, "--name", host,
                 "--nworkers", "1", "--nthreads", "1", "--host", address(host), "--no-dashboard",
                 "--memory-limit", "2GiB"],
                stdout=open(logs / f"{host}.log", "w"), stderr=subprocess.STDOUT, env=s3_env))

        # The reference, while the hosts start: the same MNIST, the same chunks, on local disk, on this
        # process's LocalCluster (root namespace).
        reference_store = tmp_path / "reference" / "mnist.zarr"
        ingest_idx("mnist", reference_store, source=SHIPPED_MNIST, chunk_rows=CHUNK_ROWS)
        init = random_rows(open_store(reference_store, split="test").images.compute(), 10, seed=3)
        reference = KMeans(n_clusters=10, init=init, n_init=1, max_iter=MAX_ITER, tol=0).fit(str(reference_store))
        expected = np.ascontiguousarray(reference.cluster_centers_)
        init_file = tmp_path / "client-init" / "init.npy"
        init_file.parent.mkdir()
        np.save(init_file, init)

        # The client host: ingest into S3, fit; the test kills host w2 once the fit has done KILL_AFTER iterations.
        (tmp_path / "client.py").write_text(CLIENT)
        client_proc = subprocess.Popen(
            ["ip", "netns", "exec", ns("client"), sys.executable, str(tmp_path / "client.py"), scheduler, STORE,
             str(init_file), str(MAX_ITER), str(CHUNK_ROWS)],
            stdout=subprocess.PIPE, stderr=open(logs / "client.log", "w"), text=True, env=s3_env, cwd=tmp_path)
        stack.callback(lambda: client_proc.poll() is None and (client_proc.kill(), client_proc.wait()))
        lines = queue.Queue()

        def read_client():
            for line in client_proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read_client, daemon=True).start()

        said, killed_at, killed_pids, result = [], None, [], None
        deadline = time.monotonic() + 150
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the client said nothing more in time (so far: {said[-5:]})\n{_tail(logs)}")
            if line is None:
                break
            said.append(line)
            if line == f"ITERATION {KILL_AFTER}" and killed_at is None:
                killed_pids = netns_pids(ns("w2"))  # the nanny and its worker process: the whole host
                killed_at = time.time()
                for pid in killed_pids:
                    os.kill(pid, signal.SIGKILL)
            elif line.startswith("RESULT "):
                result = json.loads(line.removeprefix("RESULT "))
        client_proc.wait(timeout=30)
        assert client_proc.returncode == 0 and result, f"client exited with {client_proc.returncode}\n{_tail(logs)}"
        w2_left = netns_pids(ns("w2"))
        seconds = time.monotonic() - started

    s3_log = (logs / "s3.log").read_text(errors="replace")
    context = f"client said: {said[:3]} ... {said[-3:-1]}\n{_tail(logs)}"

    # Bit-identical to the reference, with one worker host gone midway.
    centers = np.frombuffer(base64.b64decode(result["centers"]), dtype=result["dtype"]).reshape(result["shape"])
    digest = hashlib.sha256(centers.tobytes()).hexdigest()
    assert killed_at is not None, f"the fit never reported iteration {KILL_AFTER}\n{context}"
    assert digest == hashlib.sha256(expected.tobytes()).hexdigest(), context
    assert centers.dtype == expected.dtype and np.array_equal(centers, expected)
    assert result["n_iter"] == reference.n_iter_ == MAX_ITER and result["inertia"] == reference.inertia_

    # Host w2 was killed in the middle of the fit: after KILL_AFTER iterations, before the last, and the
    # scheduler dropped it (unexpectedly) while the fit ran; w1 alone finished it.
    w1, w2 = result["workers_before"]["w1"], result["workers_before"]["w2"]
    assert w1.startswith(f"tcp://{address('w1')}:") and w2.startswith(f"tcp://{address('w2')}:")
    assert len(killed_pids) >= 2 and not w2_left, (killed_pids, w2_left)  # nanny + worker, and nothing is left
    assert result["workers_after"] == {"w1": w1}
    removals = [r for r in result["removed"] if r["worker"] == w2]
    assert len(removals) == 1 and not removals[0]["expected"], result["removed"]
    iterations = result["iterations"]
    assert [i for _, i in iterations] == list(range(1, MAX_ITER + 1))
    removed_at = removals[0]["time"]
    assert iterations[KILL_AFTER - 1][0] <= killed_at <= removed_at < iterations[-1][0], (killed_at, removals)
    after_removal = [i for t, i in iterations if t > removed_at]
    assert len(after_removal) >= MAX_ITER // 2, after_removal  # w1 alone ran most of the fit

    # Every read of the data went through S3 from the workers' own addresses: moto's log names the client
    # address of each request, in the order served. Both hosts read chunks, together every chunk of the
    # images, and nothing else read any; the chunks of the blocks w2 held were read again by w1 after w2
    # had read them: dask recomputed the lost blocks on the surviving host, through S3 again.
    gets = re.findall(r"^(\d+\.\d+\.\d+\.\d+) - - \[[^\]]*\] \"GET /" + BUCKET + r"/mnist\.zarr/images/c/(\d+)/0 ",
                      s3_log, flags=re.M)
    by_host = {}
    for who, chunk in gets:
        by_host.setdefault(who, set()).add(int(chunk))
    n_chunks = -(-70000 // CHUNK_ROWS)
    assert set(by_host) == {address("w1"), address("w2")}, f"chunk reads by address: {by_host}"
    assert by_host[address("w1")] | by_host[address("w2")] == set(range(n_chunks)), by_host
    assert removals[0]["lost"] >= 1, removals  # w2 held cached blocks when it died
    order = [(who, int(chunk)) for who, chunk in gets]
    for chunk in by_host[address("w2")]:
        first_by_w2 = order.index((address("w2"), chunk))
        assert (address("w1"), chunk) in order[first_by_w2:], f"chunk {chunk} of dead host w2 never re-read by w1"
    print(f"\nmulti-host fit: {len(iterations)} iterations, host w2 (pids {killed_pids}) killed after iteration "
          f"{KILL_AFTER}, removed with {removals[0]['processing']} task(s) running and {removals[0]['lost']} "
          f"result(s) held; chunk reads from S3 by w1: {len([g for g in gets if g[0] == address('w1')])}, by w2: "
          f"{len([g for g in gets if g[0] == address('w2')])}; centroids sha256 {digest[:16]} = reference; "
          f"{seconds:.1f} s")
