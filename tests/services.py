"""Real servers for the cluster tests, started and stopped by the tests themselves.

* ``dask_processes``: ``dask scheduler`` and ``dask worker`` as separate processes on 127.0.0.1,
  optionally over TLS.
* ``make_certificates``: a CA and certificates signed by it (openssl), for TLS.
* ``s3_server``: an S3-compatible server (moto's standalone server, as s3fs's own tests use)
  on 127.0.0.1 that checks credentials, with a user, its keys and a bucket.
* ``slurm``: a single-node SLURM (munged, slurmctld, slurmd) with its configuration, key,
  state and logs in a temporary folder; needs root and Debian's slurm packages (``.ci/run``
  installs them). No systemd: the daemons are started by hand and killed afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port, timeout=30.0, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[:3]} exited with {p.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextmanager
def dask_processes(n_workers=2, *, tls=None, log_dir):
    """A ``dask scheduler`` and ``n_workers`` ``dask worker`` processes (1 thread each) on 127.0.0.1.

    Parameters
    ----------
    tls : dict, optional
        ``{"ca": ..., "cert": ..., "key": ...}``: scheduler and workers speak TLS only.
    log_dir : Path
        Where their stdout/stderr go.

    Yields
    ------
    str
        The scheduler address.
    """
    port, dashboard = free_port(), free_port()
    security = []
    if tls:
        security = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    scheme = "tls" if tls else "tcp"
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True" if tls else "False"}
    procs = []
    try:
        procs.append(subprocess.Popen(
            [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--protocol", scheme,
             "--dashboard-address", f"127.0.0.1:{dashboard}", *security],
            stdout=open(log_dir / "scheduler.log", "w"), stderr=subprocess.STDOUT, env=env))
        _wait_for_port(port, procs=procs)
        address = f"{scheme}://127.0.0.1:{port}"
        for i in range(n_workers):
            procs.append(subprocess.Popen(
                [BIN / "dask", "worker", address, "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1",
                 "--no-dashboard", "--memory-limit", "2GiB", *security],
                stdout=open(log_dir / f"worker-{i}.log", "w"), stderr=subprocess.STDOUT, env=env))
        yield address
    finally:
        _stop(procs[1:])
        _stop(procs[:1])


class S3Server:
    """A running S3-compatible server: its endpoint, the keys of its one user, a bucket of that user's."""

    def __init__(self, endpoint, key, secret, bucket):
        self.endpoint, self.key, self.secret, self.bucket = endpoint, key, secret, bucket

    def environ(self, **changes):
        """The AWS variables a client (or worker) uses to reach the server, as botocore reads them."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", **changes}  # botocore never looks for instance metadata

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.key, aws_secret_access_key=self.secret)


#: Requests the server serves without checking credentials: enough to make the user and its keys.
_S3_SETUP_REQUESTS = 10


@contextmanager
def s3_server(log_dir, *, host="127.0.0.1", port=None, netns=None, bucket="distkm-test", client_netns=None):
    """moto's S3 server in a process of its own, checking credentials; stopped afterwards.

    moto serves its first ``INITIAL_NO_AUTH_ACTION_COUNT`` requests without
    authentication: they create an IAM user with an allow-all policy and its
    access keys; every later request must be signed with those keys, so
    wrong credentials are refused as by a real service.

    Parameters
    ----------
    netns : str, optional
        Run the server inside this network namespace (``ip netns exec``).
    client_netns : str, optional
        Make the setup requests (readiness probe, IAM user and keys, bucket) from a process in
        this network namespace (``ip netns exec``), for a server this process cannot reach
        (one in another namespace). The yielded server's :meth:`S3Server.client` then cannot
        reach it from here either: use it from that namespace.

    Yields
    ------
    S3Server
    """


    port = port or free_port()
    command = [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_S3_SETUP_REQUESTS)}
    proc = subprocess.Popen(command, stdout=open(Path(log_dir) / "s3.log", "w"), stderr=subprocess.STDOUT, env=env)
    try:
        endpoint = f"http://{host}:{port}"
        if client_netns:
            yield _s3_setup_in_netns(client_netns, endpoint, bucket, proc)
            return
        yield S3Server(endpoint, *_s3_setup(endpoint, bucket, proc), bucket)
    finally:
        _stop([proc])


def _s3_setup(endpoint, bucket, proc=None):
    """What :func:`s3_server` does once its server runs, on its own: wait for it, make the user,
    its keys and the bucket, use up the unchecked requests. Returns ``(key, secret)``.

    ``proc``: the server's process, when it is this process's child (else it is not polled)."""
    import json

    import boto3

    class _Running:  # _wait_for_endpoint asks the process whether it still runs: it is not ours here
        returncode = None

        def poll(self):
            return None

    _wait_for_endpoint(endpoint, proc or _Running())
    anonymous = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                     aws_secret_access_key="setup")
    iam = boto3.client("iam", **anonymous)
    iam.create_user(UserName="distkm")
    iam.put_user_policy(UserName="distkm", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    keys = iam.create_access_key(UserName="distkm")["AccessKey"]
    S3Server(endpoint, keys["AccessKeyId"], keys["SecretAccessKey"], bucket).client().create_bucket(Bucket=bucket)
    for _ in range(_S3_SETUP_REQUESTS):  # use up the unchecked requests: from now on keys are checked
        try:
            boto3.client("iam", **anonymous).list_users()
        except Exception:
            break
    return keys["AccessKeyId"], keys["SecretAccessKey"]


def _s3_setup_in_netns(netns, endpoint, bucket, proc, timeout=60.0):
    """:func:`_s3_setup` in a Python process inside network namespace ``netns``; the :class:`S3Server`."""
    import json

    root = Path(__file__).resolve().parents[1]
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); from tests.services import _s3_setup; "
              "print(json.dumps(_s3_setup(sys.argv[2], sys.argv[3])))")
    setup = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", script, str(root), endpoint, bucket],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = setup.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        setup.kill()
        setup.communicate()
        raise TimeoutError(f"no S3 server set up at {endpoint} from namespace {netns} after {timeout} s "
                           f"(server {'exited with %s' % proc.returncode if proc.poll() is not None else 'runs'})")
    if setup.returncode != 0:
        raise RuntimeError(f"setting up the S3 server at {endpoint} from namespace {netns} failed "
                           f"(server {'exited with %s' % proc.returncode if proc.poll() is not None else 'runs'}): "
                           f"{err.strip()[-2000:]}")
    key, secret = json.loads(out.strip().splitlines()[-1])
    return S3Server(endpoint, key, secret, bucket)


def _wait_for_endpoint(url, proc, timeout=30.0):
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no S3 server at {url} after {timeout} s")


def make_certificates(folder, names=("scheduler", "worker", "client")):
    """A CA and one certificate per name (CN, and SAN 127.0.0.1/localhost), signed by it, with openssl."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=distkm-test-ca",
            "-keyout", "ca-key.pem", "-out", "ca.pem")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    files = {"ca": folder / "ca.pem"}
    for name in names:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}-key.pem",
                "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem")
        files[name] = (folder / f"{name}.pem", folder / f"{name}-key.pem")
    return files


SLURM_DAEMONS = ("munged", "slurmctld", "slurmd")


def slurm_available():
    """Why a real SLURM cannot run here, or None when it can."""
    missing = [d for d in (*SLURM_DAEMONS, "sbatch", "mungekey") if shutil.which(d) is None
               and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing; .ci/run installs it with apt)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def _slurm_conf(folder, host, memory_mb):
    return f"""\
ClusterName=distkmtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
# no systemd and no cgroups here: plain process tracking, no task containment
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm(folder):
    """A single-node SLURM whose files live in ``folder``; ``SLURM_CONF`` is exported while it runs.

    Yields
    ------
    dict
        ``{"conf": path, "startup_seconds": float}``.
    """
    reason = slurm_available()
    if reason:
        if os.environ.get("DISTKM_REQUIRE_SLURM"):
            pytest.fail(reason)
        pytest.skip(reason)
    started = time.monotonic()
    folder = Path(folder)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    probe = subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout
    real = int(probe.split("RealMemory=")[1].split()[0]) if "RealMemory=" in probe else 4096
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, host, memory_mb=int(real * 0.8)))  # below what slurmd -C reports
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        subprocess.run(["mungekey", "--create", f"--keyfile={folder}/munge.key", "--force"], check=True)
        os.chmod(folder / "munge.key", 0o600)
        subprocess.run(["munged", "--force", f"--key-file={folder}/munge.key", f"--socket={folder}/munge.socket",
                        f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                        f"--seed-file={folder}/munge.seed"], check=True)
        subprocess.run(["slurmctld", "-c"], check=True)  # -c: no state from a previous run
        subprocess.run(["slurmd"], check=True)
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"SLURM node not idle after 60 s (state {state!r}); see {folder}/*.log")
            time.sleep(0.5)
        yield {"conf": conf, "startup_seconds": time.monotonic() - started}
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = folder / f"{name}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
