"""The arguments of the ``distkm`` command: a subcommand for each application, with the options it uses.

Each subcommand names its function in :mod:`distkm.cli.commands` (``command_function``)
rather than holding it: parsing, ``--help`` and usage errors then answer
without importing dask's scheduler, scikit-learn and the applications.
"""

from __future__ import annotations

import argparse

from distkm import __version__
from distkm.io import locations

#: The file name of a command's Dask performance report (``--performance-report``).
PERFORMANCE_REPORT = "performance-report.html"


def _location(text):
    """A path argument as distkm reads it: a URL as given, a local path without ``file://``."""
    return str(locations.location(text))


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


class _DefaultsShown(argparse.HelpFormatter):
    """Help that shows an option's default, when it has one its text does not already state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class _OneLineErrors(argparse.ArgumentParser):
    """A usage mistake is one line naming it and where the help is, then exit status 2 (argparse's)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser():
    """The parser of the ``distkm`` command: one subcommand a command, each with the options it uses."""
    parser = _OneLineErrors(prog="distkm", description="Out-of-core k-means on zarr image stores, with Dask.")
    parser.add_argument("--version", action="version", version=f"distkm {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    common.add_argument("--quiet", action="store_true", help="print only the result")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_command = sub.add_parser

    def add_parser(name, **kwargs):
        return add_command(name, formatter_class=_DefaultsShown, **kwargs)

    sub.add_parser = add_parser
    parser.set_defaults(debug=False)

    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--scheduler", help="address of a running Dask scheduler (default: start a LocalCluster)")
    cluster.add_argument("--cluster-config", help="cluster-config YAML file (see cluster-configs/)")
    cluster.add_argument("--n-workers", type=_positive_int, help="LocalCluster workers (default: one per core)")
    cluster.add_argument("--threads-per-worker", type=_positive_int, help="LocalCluster threads per worker")
    cluster.add_argument("--memory-limit", help="LocalCluster memory limit per worker, e.g. 2GiB")

    ingest = sub.add_parser("ingest", parents=[common, cluster],
                            help="write MNIST, Fashion-MNIST or a folder of images into a zarr store")
    ingest.add_argument("dataset", choices=["mnist", "fashion-mnist", "folder"],
                        help="mnist or fashion-mnist (downloaded into distkm.data-cache when not found locally), "
                             "or folder: a folder of images (--source)")
    ingest.add_argument("--out", required=True, type=_location, help="zarr store to create, e.g. data/mnist.zarr")
    ingest.add_argument("--source", type=_location,
                        help="folder with the IDX .gz files (default: the dataset's known places, else "
                             "the download cache), or the folder of images for `folder`")
    ingest.add_argument("--chunk-rows", type=_positive_int, help="rows per chunk (default distkm.chunk-rows)")
    ingest.add_argument("--compressor", help="Blosc CNAME[:LEVEL[:SHUFFLE]] (default distkm.compressor)")
    ingest.add_argument("--size", default="28x28", help="folder: HEIGHTxWIDTH of every image (default 28x28)")
    ingest.add_argument("--mode", choices=["L", "RGB"], default="L", help="folder: grayscale or colour rows")
    ingest.add_argument("--fit", choices=["pad", "crop", "stretch"], default="pad",
                        help="folder: keep the aspect ratio and pad, or crop the centre, or stretch")
    ingest.add_argument("--invert", action="store_true", help="folder: dark-on-light images become light-on-dark")
    ingest.add_argument("--overwrite", action="store_true", help="replace an existing store")
    ingest.set_defaults(command_function="ingest")

    report = argparse.ArgumentParser(add_help=False)
    report.add_argument("--performance-report", action="store_true",
                        help=f"write a Dask performance report ({PERFORMANCE_REPORT}, self-contained HTML) "
                             "into the output folder (beside the output, for predict and quantize)")

    fit = sub.add_parser("fit", parents=[common, cluster, report], help="cluster a store; write a run folder")
    fit.add_argument("store", type=_location, help="zarr store with an 'images' array")
    fit.add_argument("--k", type=int, required=True, help="number of clusters")
    fit.add_argument("--out", required=True, type=_location, help="run folder to create, e.g. runs/mnist-k10")
    fit.add_argument("--split", help="use only this split of the store (train, test)")
    fit.add_argument("--init", default="k-means++",
                     help="k-means++ (on a sample), k-means|| (over all rows), random, a .npy file or a run folder")
    fit.add_argument("--algorithm", choices=["auto", "elkan", "lloyd", "minibatch"], default="auto",
                     help="elkan: Lloyd's iterations computing only the distances that per-row bounds do not "
                          "settle (the results of lloyd, to the bit); lloyd: every distance of every row each "
                          "iteration; auto: the faster as measured (elkan in float64, lloyd in float32); "
                          "minibatch: a few chunks per step (--max-iter then counts passes)")
    fit.add_argument("--max-iter", type=int, default=300, help="most Lloyd iterations of one initialisation")
    fit.add_argument("--tol", type=float, default=1e-4, help="relative to the mean feature variance")
    fit.add_argument("--n-init", default="auto",
                     help="initialisations to try (auto: 1 for k-means++ and k-means||, 10 for random)")
    fit.add_argument("--seed", type=int, default=None, help="random seed: same seed, same bits on any cluster")
    fit.add_argument("--dtype", choices=["float32", "float64"],
                     help="compute dtype (default: float32 for integer pixels, the store's own for floats)")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing run folder once the new one is done")
    fit.add_argument("--resume", action="store_true",
                     help="continue an interrupted fit from its last checkpoint (OUT.partial)")
    _cache_flag(fit, "during the fit")
    _report_flags(fit)
    fit.set_defaults(command_function="fit")

    evaluate = sub.add_parser("evaluate", parents=[common, cluster, report],
                              help="score a run against the true labels, on every split; pictures and report")
    evaluate.add_argument("run", type=_location, help="run folder written by distkm fit")
    evaluate.add_argument("--data", type=_location,
                          help="labelled store to evaluate on (default: the store the run was fitted on)")
    evaluate.add_argument("--members", type=int, help="members pictured per cluster (default distkm.members)")
    evaluate.add_argument("--silhouette-sample", type=int,
                          help="rows sampled per split for the silhouette score (default distkm.silhouette-sample; "
                               "0 skips it)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the random members and the sample")
    evaluate.add_argument("--no-pictures", action="store_true", help="write no PNG pictures")
    evaluate.set_defaults(command_function="evaluate")

    sweeper = sub.add_parser("sweep", parents=[common, cluster, report],
                             help="fit and score several k on one store: a table and an elbow plot")
    sweeper.add_argument("store", type=_location, help="zarr store with an 'images' array (and labels for the scores)")
    sweeper.add_argument("--k", required=True, help="comma-separated list, e.g. 2,5,8,10,12,16,20,25,64,256")
    sweeper.add_argument("--out", required=True, type=_location, help="folder to create, e.g. runs/sweep")
    sweeper.add_argument("--split", help="split to fit on (default: train when the store has one)")
    sweeper.add_argument("--seed", type=int, default=0, help="random seed of every fit and of the scores' sample")
    sweeper.add_argument("--max-iter", type=int, default=300, help="most Lloyd iterations of each fit")
    sweeper.add_argument("--tol", type=float, default=1e-4, help="relative to the mean feature variance")
    sweeper.add_argument("--n-init", default="auto",
                         help="initialisations per k (auto: 1 for k-means++ and k-means||, 10 for random)")
    sweeper.add_argument("--dtype", choices=["float32", "float64"],
                         help="compute dtype (default: float32 for integer pixels, the store's own for floats)")
    sweeper.add_argument("--silhouette-sample", type=int,
                         help="rows sampled for the silhouette score (default distkm.silhouette-sample; 0 skips it)")
    _cache_flag(sweeper, "for all the fits")
    sweeper.add_argument("--no-pictures", action="store_true", help="no elbow.png")
    sweeper.add_argument("--overwrite", action="store_true",
                         help="replace an existing sweep folder (one distkm wrote) once the new one is done")
    sweeper.set_defaults(command_function="sweep")

    quant = sub.add_parser("quantize", parents=[common, cluster, report],
                           help="reduce an image (or a folder of images) to k colours found by k-means")
    quant.add_argument("source", type=_location, help="an image file, or a folder of images (one palette for all)")
    quant.add_argument("--k", type=_positive_int, required=True, help="number of colours")
    quant.add_argument("--out", required=True, type=_location,
                       help="output image (for a file) or folder (for a folder)")
    quant.add_argument("--seed", type=int, default=0, help="seed of the k-means++ initialisation")
    quant.add_argument("--max-iter", type=int, default=300, help="most Lloyd iterations")
    quant.add_argument("--chunk-pixels", type=_positive_int,
                       help="pixels per chunk, one task each (default distkm.quantize-chunk-pixels)")
    quant.add_argument("--no-pictures", action="store_true", help="no palette PNG (the JSON is always written)")
    quant.add_argument("--overwrite", action="store_true",
                       help="replace outputs that distkm wrote (an image with its palette, or a folder)")
    quant.set_defaults(command_function="quantize")

    augment = sub.add_parser("augment", parents=[common, cluster],
                             help="generate a bigger store by distorting a store's images, on the cluster")
    augment.add_argument("source", type=_location, help="distkm store to draw images from, e.g. data/mnist.zarr")
    augment.add_argument("--n", type=int, required=True,
                         help="rows to generate (originals first); with --split, the source's other splits follow")
    augment.add_argument("--out", required=True, type=_location,
                         help="store to create (generated at OUT.partial, resumable)")
    augment.add_argument("--seed", type=int, default=0, help="chunk i depends only on (source, seed, i)")
    augment.add_argument("--split", help="draw only from this split of the source (e.g. train); the new store keeps "
                                         "its name for the generated rows and carries the other splits (test) over "
                                         "untouched, so fit --split train and the test scores work on it")
    augment.add_argument("--chunk-rows", type=_positive_int, help="rows per chunk (default distkm.chunk-rows)")
    augment.add_argument("--compressor", help="Blosc CNAME[:LEVEL[:SHUFFLE]], e.g. lz4:5 (default distkm.compressor)")
    augment.add_argument("--strength", type=float, default=1.0, help="scales every distortion (0: copies)")
    augment.add_argument("--no-originals", action="store_true", help="do not start with the source rows")
    augment.add_argument("--image-shape", help="HxW or HxWxC of a row, if the source does not declare it")
    augment.add_argument("--overwrite", action="store_true", help="replace an existing store once the new one is done")
    augment.set_defaults(command_function="augment")

    predict = sub.add_parser("predict", parents=[common, cluster, report],
                             help="assign the rows of a store to a run's clusters")
    predict.add_argument("run", type=_location, help="run folder written by distkm fit")
    predict.add_argument("store", type=_location, help="zarr store with an 'images' array")
    predict.add_argument("--out", required=True, type=_location, help="zarr array of labels to create")
    predict.add_argument("--split", help="use only this split of the store")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace an existing labels array (one distkm wrote) once the new one is done")
    predict.set_defaults(command_function="predict")
    return parser


def _report_flags(parser):
    parser.add_argument("--no-evaluate", action="store_true",
                        help="skip the evaluation pass (scores, members, confusion matrix)")
    parser.add_argument("--no-pictures", action="store_true", help="write no PNG pictures")


def _cache_flag(parser, when):
    parser.add_argument("--cache", choices=["auto", "yes", "no"], default="auto",
                        help=f"keep the store's chunks in the workers' memory {when} "
                             "(auto: when they take at most distkm.cache-fraction of it, 0.4 by default)")
