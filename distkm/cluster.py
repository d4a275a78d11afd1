"""Get a Dask client: connect to a running scheduler, or start a LocalCluster.

Both close what they started when the ``with`` block ends.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from dask.utils import parse_timedelta
from distributed import Client, LocalCluster

from . import config


@contextmanager
def dask_client(scheduler=None, *, timeout=None, n_workers=None, threads_per_worker=None, memory_limit=None):
    """A connected :class:`distributed.Client`.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:port``). Without it a
        LocalCluster is started with the ``distkm.local-cluster`` settings.
    timeout : str or float, optional
        How long to wait for the scheduler (default ``distkm.scheduler-timeout``).
    n_workers, threads_per_worker, memory_limit : optional
        Override the LocalCluster settings.

    Yields
    ------
    distributed.Client
    """
    if scheduler:
        timeout = parse_timedelta(timeout or config.get("scheduler-timeout"))
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as e:
            raise ConnectionError(f"cannot reach the Dask scheduler at {scheduler!r} within {timeout:g} s "
                                  f"({type(e).__name__}); check the address and that the scheduler is running") from e
        with client:
            yield client
        return
    settings = config.get("local-cluster", {})
    cluster = LocalCluster(
        n_workers=n_workers or settings.get("n-workers"),
        threads_per_worker=threads_per_worker or settings.get("threads-per-worker", 1),
        memory_limit=memory_limit or settings.get("memory-limit", "auto"),
        dashboard_address=settings.get("dashboard-address", "127.0.0.1:8787"),
        host="127.0.0.1",
        silence_logs=logging.ERROR,
    )
    with cluster, Client(cluster) as client:
        yield client
