"""``distkm evaluate``: a fitted run scored against the true labels of a store, with its pictures and report.

A run on object storage is evaluated into a local folder that is uploaded
into the run when complete; its old pictures are replaced, as a local
evaluate's are.
"""

from __future__ import annotations

from contextlib import contextmanager

from distkm.estimator import load_model
from distkm.evaluation.report import report_run
from distkm.io import locations
from distkm.io.outputs import check_not_an_input, staged_locally
from distkm.io.stores import open_store

#: What an evaluation writes into its run folder (replacing what was there).
WRITES = ("pictures", "evaluation.json", "report.md")


class EvaluateJob:
    """Evaluate the run folder ``run`` on the store it was fitted on, or on ``data``.

    Everything that can be checked without a cluster is checked when the job
    is made: the run, the store, their widths, and that the store is not
    among what the evaluation replaces.
    """

    def __init__(self, run, data=None):
        self.run_dir = run
        self.model, self.meta = load_model(run)
        self.data = data or self.meta.get("data", {}).get("path")
        if not self.data:
            raise ValueError(f"{locations.public_url(run)}/model.json does not say which store it was fitted on; "
                             "pass --data STORE")
        for written in WRITES:
            check_not_an_input(locations.join(run, written), [self.data])
        self.store = open_store(self.data)
        if self.store.images.shape[1] != self.model.n_features_in_:
            raise ValueError(f"store {locations.public_url(self.data)!r} has {self.store.images.shape[1]} features "
                             f"per row, but the model was fitted on {self.model.n_features_in_}")

    @contextmanager
    def staged(self):
        """The folder to evaluate into: the run itself, or a local one uploaded into a run on object storage."""
        with staged_locally(self.run_dir) as folder:
            yield folder
            if locations.is_url(self.run_dir):  # the new pictures replace the old ones
                locations.remove(locations.join(self.run_dir, "pictures"))

    def run(self, folder, *, pictures=True, n_members=None, silhouette_sample=None, seed=0):
        """Evaluate on the current Dask client and write into ``folder``; returns the Evaluation."""
        return report_run(folder, self.model, self.meta, self.store, pictures=pictures, n_members=n_members,
                          silhouette_sample=silhouette_sample, seed=seed, name=self.run_dir)
