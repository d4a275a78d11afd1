"""Get a Dask client: connect to a running scheduler, or start a LocalCluster.

Both close what they started when the ``with`` block ends.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import dask.config
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster

from . import config
from .cluster_config import load_cluster_config

logger = logging.getLogger("distkm")


@contextmanager
def dask_client(scheduler=None, *, cluster_config=None, timeout=None, n_workers=None, threads_per_worker=None,
                memory_limit=None):
    """A connected :class:`distributed.Client`.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:port``). Without it a
        LocalCluster is started with the ``distkm.local-cluster`` settings.
    cluster_config : str or Path, optional
        A cluster-config file (see :mod:`distkm.cluster_config`); its
        settings override the defaults, explicit arguments override it.
    timeout : str or float, optional
        How long to wait for the scheduler (default ``distkm.scheduler-timeout``).
    n_workers, threads_per_worker, memory_limit : optional
        Override the LocalCluster settings.

    Yields
    ------
    distributed.Client
    """
    settings = dict(config.get("local-cluster", {}))
    if cluster_config is not None:
        kind, section = load_cluster_config(cluster_config)
        if kind == "address":
            scheduler = scheduler or section["scheduler"]
            timeout = timeout or section.get("timeout")
        else:
            settings.update(section)
    if scheduler:
        timeout = parse_timedelta(timeout or config.get("scheduler-timeout"))
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as e:
            raise ConnectionError(f"cannot reach the Dask scheduler at {scheduler!r} within {timeout:g} s "
                                  f"({type(e).__name__}); check the address and that the scheduler is running") from e
        with client, report_lost_workers(client):
            yield client
        return
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **settings.get("worker-environ", {})}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = _local_cluster(settings, n_workers, threads_per_worker, memory_limit)
    with cluster, Client(cluster) as client, report_lost_workers(client):
        yield client


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
