"""Get a Dask client from a cluster config: connect to a running scheduler, or start a cluster.

LocalCluster, SSHCluster, dask-jobqueue's SLURMCluster and dask-kubernetes' KubeCluster are
started here and closed when the ``with`` block ends; a running scheduler is only connected to.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import warnings
from contextlib import contextmanager

import dask.config
from dask.system import CPU_COUNT
from dask.utils import format_bytes, parse_bytes, parse_timedelta
from distributed import Client, LocalCluster
from distributed.comm.addressing import parse_address, parse_host_port

from distkm import config
from distkm.cluster import configs as cc
from distkm.cluster import dashboard
from distkm.cluster.configs import load_cluster_config, tls_security

logger = logging.getLogger("distkm")


@contextmanager
def dask_client(scheduler=None, *, cluster_config=None, timeout=None, n_workers=None, threads_per_worker=None,
                memory_limit=None, data_nbytes=None):
    """A connected :class:`distributed.Client`; what it started is closed when the block ends.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:port``, or ``tls://``
        with a ``tls`` cluster config for the certificates). Without it, and
        without a config, a LocalCluster is started with the
        ``distkm.local-cluster`` settings.
    cluster_config : str or Path, optional
        A cluster-config file (see :mod:`distkm.cluster.configs`): ``local``,
        ``address``, ``tls``, ``ssh``, ``slurm`` or ``kubernetes``.
    timeout : str or float, optional
        How long to wait for the scheduler (default ``distkm.scheduler-timeout``).
    n_workers, threads_per_worker, memory_limit : optional
        Override the LocalCluster settings.
    data_nbytes : int, optional
        Size of the data the command works on. With ``processes: auto`` (the
        default), a LocalCluster for at most ``threads-up-to`` bytes runs its
        workers as threads of this process, which start in a fraction of the
        time of worker processes.

    Yields
    ------
    distributed.Client
    """
    kind, section = load_cluster_config(cluster_config) if cluster_config is not None else ("local", {})
    security = None
    if kind == "tls":
        security = tls_security(section)
    if scheduler or kind in ("address", "tls"):
        address = scheduler or section["scheduler"]
        client = _connect(address, timeout or section.get("timeout"), security)
        with client, report_lost_workers(client):
            dashboard.install(client)
            yield client
        return
    if kind == "local":
        settings = {**config.section("local-cluster"), **section}
        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}),
                   **settings.get("worker-environ", {})}
        processes = _use_processes(settings, data_nbytes)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _environ_restored(environ):
            cluster = _local_cluster(settings, n_workers, threads_per_worker, memory_limit, processes=processes)
        n_expected = 0  # a LocalCluster returns with its workers up
        link = {} if processes else _dashboard_link_config(settings)
    else:
        cluster, n_expected = _start_cluster(kind, section)
        link = {}
    with cluster, dask.config.set(link), Client(cluster) as client, report_lost_workers(client):
        dashboard.install(client)
        if kind == "local":
            _check_room_to_work(client)
        if n_expected:
            _wait_for_workers(client, n_expected, kind, section)
        yield client


def _connect(address, timeout, security):
    timeout = parse_timedelta(timeout or config.get("scheduler-timeout"))
    if address.startswith("tls://") and security is None:
        raise ValueError(f"{address} needs TLS certificates: pass --cluster-config with a 'tls' config "
                         "(see cluster-configs/tls.yaml)")
    _check_listening(address, timeout)
    # The whole handshake gets the timeout: a peer that accepts the connection and never answers (a
    # plain HTTP server, say) would otherwise keep Client() waiting for good.
    outcome = {}

    def connect():
        try:
            outcome["client"] = Client(address, timeout=timeout, security=security)
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=connect, name="distkm-connect", daemon=True)
    thread.start()
    thread.join(timeout + 2)
    if thread.is_alive():
        raise ConnectionError(f"{address!r} accepts connections but no Dask scheduler answered there within "
                              f"{timeout:g} s; check the address (is it the scheduler's port, not its dashboard's?)")
    if "client" in outcome:
        return outcome["client"]
    error = outcome["error"]
    tls = _tls_reason(error)
    if tls:
        raise ConnectionError(f"the TLS handshake with {address!r} failed ({tls}); check that the certificates of "
                              "the cluster config were signed by the scheduler's CA") from error
    if isinstance(error, (OSError, TimeoutError)):
        raise ConnectionError(f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s "
                              f"({type(error).__name__}); check the address and that the scheduler is "
                              "running") from error
    raise ConnectionError(f"{address!r} answered, but not as a Dask scheduler ({type(error).__name__}); check the "
                          "address") from error


def _check_listening(address, timeout):
    """Fail at once, in words, when nothing listens at the scheduler's address."""
    try:
        host, port = parse_host_port(parse_address(address)[1])
    except ValueError:
        return  # not host:port (inproc, ucx...): let distributed judge
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach the Dask scheduler at {address!r} ({e.strerror or e}); check the "
                              "address and that the scheduler is running") from e


def _tls_reason(error):
    """The SSL error somewhere in ``error``'s chain, in words, or None."""
    while error is not None:
        if isinstance(error, ssl.SSLError):
            return getattr(error, "reason", None) or str(error)
        error = error.__cause__ or error.__context__
    return None


def _start_cluster(kind, section):
    """Start an ssh, slurm or kubernetes cluster; returns it and the number of workers to wait for."""
    if kind == "slurm":
        from dask_jobqueue import SLURMCluster

        kwargs = cc.slurm_cluster_kwargs(section)
        with _scheduler_settings(section):  # the scheduler runs in this process
            cluster = SLURMCluster(silence_logs=logging.ERROR, **kwargs)
        jobs = section.get("jobs", 1)
        logger.info("submitting %d SLURM job(s) for workers:\n%s", jobs, cluster.job_script())
        cluster.scale(jobs=jobs)
        return cluster, jobs * kwargs["processes"]
    if kind == "ssh":
        from distributed import SSHCluster

        kwargs = cc.ssh_cluster_kwargs(section)
        return SSHCluster(**kwargs), 0  # SSHCluster returns with its workers up
    if kind == "kubernetes":
        from dask_kubernetes.operator import KubeCluster

        spec = cc.kubernetes_cluster_spec(section)
        cluster = KubeCluster(custom_cluster_spec=spec, namespace=section.get("namespace"))
        return cluster, section.get("n-workers", 2)
    raise ValueError(f"unknown cluster type {kind!r}")


def _wait_for_workers(client, n, kind, section):
    timeout = parse_timedelta(section.get("wait-timeout", "300s"))
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        have = len(client.scheduler_info(n_workers=-1)["workers"])
        hint = {"slurm": "check `squeue` and the job logs (slurm.log-directory)",
                "kubernetes": "check `kubectl get pods`"}.get(kind, "")
        raise TimeoutError(f"only {have} of {n} {kind} worker(s) started within {timeout:g} s; {hint}") from None


@contextmanager
def _environ_restored(names):
    """Give this process's environment back its values of ``names`` when the block ends.

    distributed's nanny sets its pre-spawn variables in the parent's own
    ``os.environ`` before spawning a worker and leaves them there; as it also
    lets variables already in ``os.environ`` win over its config, a second
    LocalCluster in the same process would get the first one's worker
    environment whatever distkm's config says, and every later subprocess
    would inherit it. Variables the user set before are kept, and still win.
    """
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _use_processes(settings, data_nbytes):
    """Whether a LocalCluster gets worker processes (see ``distkm.local-cluster.processes``)."""
    processes = settings.get("processes", "auto")
    if processes == "auto":
        return data_nbytes is None or data_nbytes > parse_bytes(settings.get("threads-up-to", 0))
    if not isinstance(processes, bool):
        raise ValueError(f"distkm.local-cluster.processes must be true, false or 'auto', got {processes!r}")
    return processes


def _dashboard_link_config(settings):
    """The dashboard link of a LocalCluster of threads, naming the host its dashboard listens on.

    Its scheduler's address is ``inproc://<machine's IP>/...``, from which
    distributed would build a link to the machine's IP, while the dashboard
    listens on ``dashboard-address`` (the loopback by default).
    """
    host = str(settings.get("dashboard-address") or "").rpartition(":")[0]
    template = dask.config.get("distributed.dashboard.link")
    return {"distributed.dashboard.link": template.replace("{host}", host)} if host else {}


def _scheduler_settings(section):
    """dask config for a LocalCluster started in this process: ``worker-saturation`` from the section, else
    distkm's, and worker processes whose asyncio logger is quiet.

    aiohttp (under s3fs) reports the sessions still open when a worker process ends ("Unclosed client
    session") through asyncio's logger: harmless at exit, noise on the user's terminal. The variable is
    read by distributed as the worker process starts, before any task.
    """
    settings = {"distributed.nanny.pre-spawn-environ.DASK_LOGGING__ASYNCIO": "critical"}
    saturation = section.get("worker-saturation", config.section("local-cluster").get("worker-saturation"))
    if saturation is not None:
        settings["distributed.scheduler.worker-saturation"] = saturation  # read as the scheduler starts
    return dask.config.set(settings)


def _local_cluster(settings, n_workers, threads_per_worker, memory_limit, *, processes=True):
    threads = threads_per_worker or settings.get("threads-per-worker", 1)
    n_workers = n_workers or settings.get("n-workers")
    if n_workers is None and not processes:  # LocalCluster would start one worker: keep one per core
        n_workers = max(1, CPU_COUNT // threads)
    # A taken dashboard port is not the user's problem: another free one is used, and its link printed.
    with _scheduler_settings(settings), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        return LocalCluster(
            processes=processes,
            n_workers=n_workers,
            threads_per_worker=threads,
            memory_limit=memory_limit or settings.get("memory-limit", "auto"),
            dashboard_address=settings.get("dashboard-address", "127.0.0.1:8787"),
            # Everything listens on the loopback only. Worker processes: by their host. Workers as threads
            # talk in-process (inproc://, where a host is refused), but their HTTP servers (/health,
            # /metrics) bound 0.0.0.0 and [::]: given an address, they keep to the loopback.
            host="127.0.0.1" if processes else None,
            worker_dashboard_address=None if processes else "127.0.0.1:0",
            # Tasks that fail reach the user as distkm's one line; distributed's own ERROR blocks about them
            # (a worker's "Compute Failed" with its traceback) would bury it.
            silence_logs=logging.CRITICAL,
        )


def _check_room_to_work(client):
    """Refuse a LocalCluster whose workers would be paused before their first task.

    dask pauses a worker whose process uses more than
    ``distributed.worker.memory.pause`` of its memory limit, and a paused
    worker takes no task: with a limit below what the process already uses,
    every computation would wait for good, without a word.
    """
    pause = dask.config.get("distributed.worker.memory.pause")
    if not pause:
        return
    for worker in client.scheduler_info(n_workers=-1)["workers"].values():
        limit, used = worker.get("memory_limit") or 0, worker.get("metrics", {}).get("memory", 0)
        if limit and used >= pause * limit:
            raise ValueError(f"memory_limit must be more than a worker uses before any data: it is "
                             f"{format_bytes(limit)} a worker, its process already uses {format_bytes(used)}, and "
                             f"dask pauses a worker above {pause:.0%} of its limit (every task would wait for "
                             f"good); give each worker well over {format_bytes(used / pause)}")


@contextmanager
def report_lost_workers(client):
    """While in the block, log a line whenever a worker leaves unexpectedly (its tasks are rerun elsewhere).

    The scheduler already publishes a ``remove-worker`` event on its "all"
    topic; this subscribes to it from the client, and unsubscribes before
    the client closes (else the scheduler would send it its own goodbye).
    """
    def on_event(event):
        _, msg = event
        if isinstance(msg, dict) and msg.get("action") == "remove-worker" and not msg.get("expected"):
            logger.warning("worker %s lost (%d task(s) running, %d result(s) held): dask reruns them on the "
                           "other workers; the results do not change", msg.get("worker"),
                           len(msg.get("processing-tasks", ())), len(msg.get("lost-computed-tasks", ())))

    client.subscribe_topic("all", on_event)
    try:
        yield
    finally:
        client.unsubscribe_topic("all")
