"""Timing and peak memory of a whole command, summed over its process tree (workers included)."""

import subprocess
import threading
import time
from contextlib import contextmanager

import psutil


class PeakRSS:
    """Peak of the summed RSS of a process and all its descendants, sampled in a thread.

    Parameters
    ----------
    pid : int, optional
        Root of the tree (default: this process, so a LocalCluster it started is included).
    """

    def __init__(self, pid=None, interval=0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._root = psutil.Process(pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak

    @contextmanager
    def measure(self, into, name):
        """Peak over the block, stored as ``into[name]``."""
        time.sleep(2 * self.interval)
        self.peak = 0
        yield
        time.sleep(2 * self.interval)
        into[name] = self.peak


def run_measured(argv, interval=0.02, env=None):
    """Run ``argv``; return (seconds, peak summed RSS in bytes of it and its descendants, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    rss = PeakRSS(proc.pid, interval)
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    peak = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out}")
    return seconds, peak, out
