"""Get a Dask client from a cluster config: connect to a running scheduler, or start a cluster.

LocalCluster, SSHCluster, dask-jobqueue's SLURMCluster and dask-kubernetes' KubeCluster are
started here and closed when the ``with`` block ends; a running scheduler is only connected to.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import dask.config
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster

from . import config, dashboard
from .cluster_config import load_cluster_config

logger = logging.getLogger("distkm")


@contextmanager
def dask_client(scheduler=None, *, cluster_config=None, timeout=None, n_workers=None, threads_per_worker=None,
                memory_limit=None):
    """A connected :class:`distributed.Client`; what it started is closed when the block ends.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:port``, or ``tls://``
        with a ``tls`` cluster config for the certificates). Without it, and
        without a config, a LocalCluster is started with the
        ``distkm.local-cluster`` settings.
    cluster_config : str or Path, optional
        A cluster-config file (see :mod:`distkm.cluster_config`): ``local``,
        ``address``, ``tls``, ``ssh``, ``slurm`` or ``kubernetes``.
    timeout : str or float, optional
        How long to wait for the scheduler (default ``distkm.scheduler-timeout``).
    n_workers, threads_per_worker, memory_limit : optional
        Override the LocalCluster settings.

    Yields
    ------
    distributed.Client
    """
    kind, section = load_cluster_config(cluster_config) if cluster_config is not None else ("local", {})
    security = None
    if kind == "tls":
        from .cluster_config import tls_security

        security = tls_security(section)
    if scheduler or kind in ("address", "tls"):
        address = scheduler or section["scheduler"]
        client = _connect(address, timeout or section.get("timeout"), security)
        with client, report_lost_workers(client):
            dashboard.install(client)
            yield client
        return
    if kind == "local":
        settings = {**config.get("local-cluster", {}), **section}
        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}),
                   **settings.get("worker-environ", {})}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = _local_cluster(settings, n_workers, threads_per_worker, memory_limit)
        n_expected = 0  # a LocalCluster returns with its workers up
    else:
        cluster, n_expected = _start_cluster(kind, section)
    with cluster, Client(cluster) as client, report_lost_workers(client):
        dashboard.install(client)
        if n_expected:
            _wait_for_workers(client, n_expected, kind, section)
        yield client


def _connect(address, timeout, security):
    timeout = parse_timedelta(timeout or config.get("scheduler-timeout"))
    if address.startswith("tls://") and security is None:
        raise ValueError(f"{address} needs TLS certificates: pass --cluster-config with a 'tls' config "
                         "(see cluster-configs/tls.yaml)")
    try:
        return Client(address, timeout=timeout, security=security)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConnectionError(f"cannot reach the Dask scheduler at {address!r} within {timeout:g} s "
                              f"({type(e).__name__}); check the address and that the scheduler is running") from e


def _start_cluster(kind, section):
    """Start an ssh, slurm or kubernetes cluster; returns it and the number of workers to wait for."""
    from . import cluster_config as cc

    if kind == "slurm":
        from dask_jobqueue import SLURMCluster

        kwargs = cc.slurm_cluster_kwargs(section)
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


def _local_cluster(settings, n_workers, threads_per_worker, memory_limit):
    return LocalCluster(
        n_workers=n_workers or settings.get("n-workers"),
        threads_per_worker=threads_per_worker or settings.get("threads-per-worker", 1),
        memory_limit=memory_limit or settings.get("memory-limit", "auto"),
        dashboard_address=settings.get("dashboard-address", "127.0.0.1:8787"),
        host="127.0.0.1",
        silence_logs=logging.ERROR,
    )


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
