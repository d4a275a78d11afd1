"""Everything distkm starts listens on the loopback only (the sockets are read from /proc during a fit)."""

import os
from pathlib import Path

import pytest

from distkm.cluster.client import dask_client


def listening_addresses(pids):
    """``host:port`` of every listening TCP socket (IPv4 and IPv6) that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                found.append((_host(host, width), int(port, 16)))
    return found


def _host(hexhost, width):
    raw = bytes.fromhex(hexhost)
    if width == 8:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    return ":".join(b"".join(words).hex()[i:i + 4] for i in range(0, 32, 4))


LOOPBACK = {"127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001"}


@pytest.mark.parametrize("data_nbytes", [1_000, 10**12], ids=["workers as threads", "worker processes"])
def test_the_local_cluster_listens_on_the_loopback_only(data_nbytes):
    with dask_client(None, data_nbytes=data_nbytes, n_workers=2) as client:
        pids = {os.getpid()} | set(client.run(os.getpid).values()) | set(client.run(os.getppid).values())
        found = listening_addresses(pids)
    assert found, "no listening socket found: the check itself is broken"
    exposed = [f"{host}:{port}" for host, port in found if host not in LOOPBACK]
    assert not exposed, exposed


def test_local_cluster_settings_from_environment_variables_are_honoured(tmp_path):
    """DASK_DISTKM__LOCAL_CLUSTER__MEMORY_LIMIT lands in dask.config as local_cluster.memory_limit: read it."""
    import subprocess
    import sys

    script = ("from distkm.cluster.client import dask_client\n"
              "with dask_client(None, data_nbytes=1000, n_workers=2) as client:\n"
              "    print(sorted({w['memory_limit'] for w in client.scheduler_info()['workers'].values()}))\n")
    env = {**os.environ, "DASK_DISTKM__LOCAL_CLUSTER__MEMORY_LIMIT": "300MiB",
           "DASK_DISTKM__LOCAL_CLUSTER__THREADS_PER_WORKER": "2"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([300 * 2**20]), result.stdout
