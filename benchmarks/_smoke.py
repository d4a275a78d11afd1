"""What the benchmarks' ``--smoke`` runs share: the flag itself, and a tiny MNIST store in a temporary folder.

``--smoke`` runs a benchmark's own code path end to end on a few thousand rows, in seconds, so that
``tests/system/test_benchmarks.py`` can run every benchmark and none of them rots unnoticed. Its
numbers measure nothing: they only show that the benchmark still computes and prints them.
"""

import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where the real runs keep their stores (ignored by git): data/mnist.zarr, data/aug1m.zarr, ...
DATA = ROOT / "data"


def parse_args(parser, smoke):
    """Parse the command line with ``--smoke`` added: it swaps the real defaults for the parameter set ``smoke``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The benchmark's parser, its defaults those of the real run.
    smoke : dict
        Defaults of the smoke run (tiny sizes, few iterations, one repeat); options given on the
        command line still win over them.

    Returns
    -------
    argparse.Namespace
    """
    parser.add_argument("--smoke", action="store_true",
                        help="seconds on a tiny store in a temporary folder: checks that the benchmark runs, "
                             "measures nothing")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args()
    return args


def tiny_mnist(path, *, train=3000, test=1000, chunk_rows=1000):
    """The first rows of the MNIST files that ship with distkm, as a store at ``path``.

    Laid out as ``distkm ingest mnist`` lays out the whole set (train rows, then test rows, both
    splits in the attributes), in chunks of ``chunk_rows`` rows so that a pass is still several tasks.

    Parameters
    ----------
    path : Path
    train, test : int
        Rows taken from the start of each split.
    chunk_rows : int

    Returns
    -------
    Path
        ``path``.
    """
    import numpy as np

    from distkm.io.datasets import DATASETS, SHIPPED_MNIST, read_idx
    from distkm.io.stores import STORE_FORMAT_VERSION, write_store

    images, labels, splits, start = [], [], {}, 0
    for split, rows in (("train", train), ("test", test)):
        image_file, label_file = DATASETS["mnist"].splits[split]
        x = read_idx(SHIPPED_MNIST / image_file)[:rows]
        images.append(x.reshape(rows, -1))
        labels.append(read_idx(SHIPPED_MNIST / label_file)[:rows])
        splits[split] = [start, start + rows]
        start += rows
    attrs = {"format_version": STORE_FORMAT_VERSION, "image_shape": list(x.shape[1:]), "splits": splits,
             "source": {"dataset": "mnist", "folder": str(SHIPPED_MNIST), "rows": {"train": train, "test": test}}}
    write_store(path, np.concatenate(images), np.concatenate(labels), attrs, chunk_rows=chunk_rows)
    return Path(path)


@contextmanager
def data_folder(smoke):
    """The folder of the stores: data/ for a real run; for a smoke run, a temporary one holding a tiny mnist.zarr.

    Parameters
    ----------
    smoke : bool

    Yields
    ------
    Path
    """
    if not smoke:
        yield DATA
        return
    with tempfile.TemporaryDirectory(prefix="distkm-smoke-") as tmp:
        yield tiny_mnist(Path(tmp) / "mnist.zarr").parent
