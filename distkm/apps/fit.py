"""``distkm fit``: a store (or one of its splits) into a run folder, built in ``OUT.partial``, resumable.

The run folder holds the model, the labels of the fitted rows, the
evaluation of every split of the store, the pictures and the report. After
the Lloyd loop converges, one pass over the fitted rows writes their labels,
computes the exact inertia and cluster sizes and tabulates the evaluation of
their split (:func:`distkm.engine.final.final_pass`); only the other splits
(the held-out rows) are read again, by the evaluation.

A run folder on object storage (``--out s3://...``) is built the same way,
under the prefix ``OUT.partial``: the checkpoint and the labels array go
there at once, so a killed fit resumes from any machine; the small files
(model, report, pictures) are made in a local folder named after the output
and uploaded at the end, then the whole is moved into place
(:mod:`distkm.io.publish`, which a kill at any point does not strand).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from distkm.engine.final import labels_array_for, write_labels
from distkm.estimator import KMeans
from distkm.evaluation.report import evaluation_plan_for, report_run
from distkm.io import locations
from distkm.io.checkpoint import Checkpoint
from distkm.io.model import save_model
from distkm.io.outputs import ResumableOutput
from distkm.io.stores import open_store, zarr_location


class FitJob:
    """Fit a store into a run folder.

    Everything that can be checked without a cluster is checked when the job
    is made: the store and the split, the output path (never over an input),
    an interrupted fit in the way, the estimator's parameters.

    Parameters
    ----------
    store : str or Path
        A distkm store.
    out : str or Path
        The run folder to create.
    params : dict
        :class:`~distkm.KMeans` parameters (its checkpoint goes into ``OUT.partial``).
    split : str, optional
        Fit only this split's rows (every split is evaluated).
    inputs : list, optional
        Other inputs of the fit (an init file or run folder) that the output may not overlap.
    overwrite : bool
        Replace an existing run folder (distkm's own only) once the new one is complete.
    resume : bool
        Continue the interrupted fit in ``OUT.partial``.

    Attributes
    ----------
    store : distkm.io.stores.ImageStore
        The whole store (its other splits are evaluated too).
    x : dask.array.Array
        The rows fitted.
    output : distkm.io.outputs.ResumableOutput
        The run folder, built in ``output.work`` (``OUT.partial``), checkpoint included.
    work : Path
        The local folder the small files are written in: ``OUT.partial`` itself, or for a URL
        a folder named after the output in the system's temporary folder.
    kept : bool
        After a failure: whether ``OUT.partial`` was kept for a resume (it holds a checkpoint).
    """

    def __init__(self, store, out, *, params, split=None, inputs=(), overwrite=False, resume=False):
        self.store = open_store(store)
        self.split = split
        self.start, self.stop = self.store.bounds(split)
        self.x = self.store.images[self.start:self.stop]
        self.output = ResumableOutput(out, inputs=[store, *inputs], overwrite=overwrite)
        self.remote = locations.is_url(out)
        self.work = _local_folder(self.output.out) if self.remote else self.output.work
        self.checkpoint = Checkpoint(locations.join(self.output.work, "checkpoint"))
        self._lock = ExitStack()  # held from here until the run is published or has failed
        self._lock.enter_context(self.output)
        try:
            if self.output.interrupted() and not resume:
                raise FileExistsError(f"{locations.public_url(self.output.work)} holds an interrupted fit; continue "
                                      "it with resume=True, or delete it to start over")
            self.model = KMeans(**params, checkpoint=self.checkpoint.folder)
            self.model._validate_params()
            if self.x.shape[0] < self.model.n_clusters:
                raise ValueError(f"n_samples={self.x.shape[0]} should be >= n_clusters={self.model.n_clusters}.")
        except BaseException:
            self._lock.close()
            raise
        self.kept = False
        self._created = time.perf_counter()

    @contextmanager
    def working(self):
        """The block in which the run is built: on failure, ``OUT.partial`` is kept if it can be resumed."""
        if self.remote:  # what a killed command left; made again only when the iterations are over
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            self.work.mkdir(parents=True, exist_ok=True)
        try:
            yield self
        except BaseException:
            self.kept = self.checkpoint.exists()
            if not self.kept:  # nothing worth resuming: leave nothing behind
                self.output.discard()
            self._end()
            raise

    def run(self, *, evaluate=True, pictures=True, seed=0, progress=None):
        """Fit, write the labels, the model, the evaluation and the report into ``work``.

        ``progress`` hears the fit's events (see :func:`distkm.engine.loop.fit`).

        Returns
        -------
        meta : dict
            The run's ``model.json``.
        evaluation : distkm.evaluation.evaluate.Evaluation or None
        """
        started = time.perf_counter()
        labels_at = locations.join(self.output.work, "labels.zarr")
        locations.remove(labels_at)  # from an attempt killed while writing them
        labels_path = zarr_location(labels_at, read_only=False)
        attrs = {"store": locations.recorded(self.store.path), "split": self.split}
        final = {"labels_to": labels_array_for(labels_path, self.x, attrs=attrs), "row_offset": self.start}
        plan = evaluation_plan_for(self.store, self.split, pictures=pictures, seed=seed) if evaluate else None
        fitted_split = self.split or ("all" if plan is not None and list(plan.splits) == ["all"] else None)
        if plan is not None and fitted_split in plan.splits:  # the fitted rows are one evaluated split
            labels = self.store.labels
            final.update(evaluation=plan.settings[fitted_split],
                         classes=None if labels is None else labels[self.start:self.stop])
        self.model.fit(self.x, final=final, progress=progress)
        tables = self.model.evaluation_tables_
        fit_seconds = time.perf_counter() - started
        if final["labels_to"] is None:  # rows in irregular chunks: the labels get a pass of their own
            write_labels(labels_path, self.model.labels_, attrs=attrs)
        self.work.mkdir(parents=True, exist_ok=True)
        data = {"path": attrs["store"], "split": self.split, "array": "images",
                "n_samples": int(self.x.shape[0]), "n_features": int(self.x.shape[1])}
        meta = save_model(self.work, self.model, data=data, extra={"timings": {
            "fit_seconds": fit_seconds, "seconds_per_iteration": fit_seconds / max(self.model.n_iter_, 1),
            "command_seconds": time.perf_counter() - self._created}})
        known = None if tables is None else {fitted_split: tables}
        evaluation = report_run(self.work, self.model, meta, self.store, evaluate=evaluate, pictures=pictures,
                                name=self.output.out, seed=seed, known=known)
        return meta, evaluation

    def publish(self):
        """Move the complete run into place (replacing the old one only now) and drop the checkpoint."""
        try:
            if self.remote:
                locations.upload(self.work, self.output.work)
            self.checkpoint.remove()
            self.output.publish()
        finally:
            self._end()

    def _end(self):
        if self.remote:
            shutil.rmtree(self.work, ignore_errors=True)
        self._lock.close()


def _local_folder(url):
    """The local folder for the small files of a run going to ``url``: one name per output, so that
    what a killed command left is removed by the next one."""
    digest = hashlib.sha256(str(locations.canonical(url)).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"distkm-run-{digest}"

