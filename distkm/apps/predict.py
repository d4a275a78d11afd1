"""``distkm predict``: the rows of a store assigned to a fitted run's clusters, as a zarr array of labels."""

from __future__ import annotations

from distkm.engine.final import write_labels
from distkm.estimator import load_model
from distkm.io import locations
from distkm.io.outputs import atomic_output, check_output_path
from distkm.io.stores import open_store, zarr_location


class PredictJob:
    """Assign the rows of ``store`` (or one split) to the clusters of the run folder ``run``.

    Everything that can be checked without a cluster is checked when the job
    is made: the run, the store and its width, the output (never over an input).

    Parameters
    ----------
    run : str or Path
        A run folder written by ``distkm fit``.
    store : str or Path
        A distkm store.
    out : str or Path
        The labels array to create.
    split : str, optional
    overwrite : bool
        Replace an existing labels array (distkm's own only) once the new one is complete.
    """

    def __init__(self, run, store, out, *, split=None, overwrite=False):
        self.run_dir, self.store_path, self.out, self.split, self.overwrite = run, store, out, split, overwrite
        self.model, _ = load_model(run)
        self.store = open_store(store, split=split)
        self.inputs = [run, store]
        check_output_path(out, overwrite=overwrite, inputs=self.inputs)
        self.labels = self.model.predict(self.store.images)

    def run(self):
        """Write the labels (on the current Dask client); returns how many."""
        attrs = {"model": locations.recorded(self.run_dir), "store": locations.recorded(self.store_path),
                 "split": self.split}
        with atomic_output(self.out, overwrite=self.overwrite, inputs=self.inputs) as tmp:
            write_labels(zarr_location(tmp, read_only=False), self.labels, attrs=attrs)
        return self.labels.shape[0]
