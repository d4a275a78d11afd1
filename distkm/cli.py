"""The ``distkm`` command: parse arguments, call the library, report.

Every failure ends in one line on stderr (``distkm: error: ...``) and a
non-zero exit; ``--debug`` shows the traceback instead. Outputs are written
to a temporary folder and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import dask.config
import numpy as np

from distkm import __version__

EXIT_ERROR = 1
PERFORMANCE_REPORT = "performance-report.html"
EXIT_INTERRUPTED = 130


def main(argv=None):
    """Entry point of the ``distkm`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _setup_logging(quiet=getattr(args, "quiet", False))
    try:
        with dask.config.set({"distkm.progress": not getattr(args, "quiet", False)}):
            return args.func(args) or 0
    except KeyboardInterrupt:
        print("distkm: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            raise
        print(f"distkm: error: {_as_flags(_one_line(e), parser)}", file=sys.stderr)
        return EXIT_ERROR


def _setup_logging(quiet):
    """distkm's own log lines (lost workers, relocations, checkpoints) on stderr; other libraries stay quiet."""
    logger = logging.getLogger("distkm")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("distkm: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    # aiohttp (under s3fs) reports its sessions still open when the process ends ("Unclosed client
    # session") through asyncio's logger: harmless at exit, and noise on the terminal.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a line is logged.

    ``main`` may run several times in one process (job scripts, tests, notebooks) with
    ``sys.stderr`` swapped in between; a handler holding the first stream would write to a closed file.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _as_flags(text, parser):
    """The library names its parameters (``overwrite=True``, ``n must ...``); the command line has flags.

    ``name=True`` becomes ``--name``, ``name=VALUE`` (a placeholder in capitals)
    ``--name VALUE``, and a leading ``name must``/``needs`` ``--name ...``,
    for the names that are options of some command.
    """
    flags = {action.dest for sub in _subparsers(parser) for action in sub._actions if action.option_strings}

    def flag(name):
        return f"--{name.replace('_', '-')}" if name in flags else None

    text = re.sub(r"\b([a-z][a-z_]*)=True\b", lambda m: flag(m[1]) or m[0], text)
    text = re.sub(r"\b([a-z][a-z_]*)=(?=[A-Z][A-Za-z]*\b)", lambda m: f"{flag(m[1])} " if flag(m[1]) else m[0], text)
    return re.sub(r"^([a-z][a-z_]*)(?= (must|needs) )", lambda m: flag(m[1]) or m[0], text)


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.values()


def _one_line(error):
    message = str(error).strip().splitlines()
    text = message[0] if message else ""
    known = (ValueError, TypeError, OSError)  # OSError covers missing files, full disks, unreachable hosts
    if isinstance(error, known) and text:
        return text
    return f"{type(error).__name__}: {text} (run with --debug for the traceback)"


# --------------------------------------------------------------------------- #
# distkm ingest
# --------------------------------------------------------------------------- #
def _ingest(args):
    from distkm.io.datasets import ingest_idx

    if args.dataset == "folder":
        return _ingest_folder(args)
    start = time.perf_counter()
    attrs = ingest_idx(args.dataset, args.out, source=args.source, chunk_rows=args.chunk_rows,
                       compressor=args.compressor, overwrite=args.overwrite)
    splits = ", ".join(f"{name} {stop - begin:,}" for name, (begin, stop) in attrs["splits"].items())
    print(f"wrote {args.out}: {args.dataset} ({splits} rows; checksums verified against "
          f"{attrs['source']['checksums']}) in {time.perf_counter() - start:.1f} s")


def _ingest_folder(args):
    from contextlib import nullcontext

    from distkm.apps.ingest import ingest_image_folder

    if not args.source:
        raise ValueError("distkm ingest folder needs --source DIR (the folder of images)")
    start = time.perf_counter()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    # Small folders convert fine on local threads; a cluster (--scheduler, --cluster-config, --n-workers)
    # spreads a big one over its workers.
    wants_cluster = args.scheduler or args.cluster_config or args.n_workers
    with _client(args) if wants_cluster else nullcontext():
        attrs = ingest_image_folder(args.source, args.out, size=size, mode=args.mode, fit=args.fit,
                                    invert=args.invert, chunk_rows=args.chunk_rows, compressor=args.compressor,
                                    overwrite=args.overwrite, progress=not args.quiet)
    labels = f", {len(attrs['label_names'])} labelled classes" if "label_names" in attrs else ", no labels"
    print(f"wrote {args.out}: {attrs['source']['files']:,} images as {'x'.join(map(str, attrs['image_shape']))} "
          f"rows ({args.mode}, {args.fit}{labels}) in {time.perf_counter() - start:.1f} s")


# --------------------------------------------------------------------------- #
# distkm fit
# --------------------------------------------------------------------------- #
def _fit(args):
    from distkm.apps.fit import FitJob
    from distkm.io.checkpoint import CheckpointError

    start = time.perf_counter()
    params = dict(n_clusters=args.k, init=_parse_init(args.init), n_init=_parse_n_init(args.n_init),
                  max_iter=args.max_iter, tol=args.tol, random_state=args.seed, dtype=args.dtype,
                  cache=_parse_cache(args.cache), algorithm=args.algorithm)
    init_path = [args.init] if args.init not in ("k-means++", "k-means||", "random") else []
    job = FitJob(args.store, args.out, params=params, split=args.split, inputs=init_path, overwrite=args.overwrite,
                 resume=args.resume)
    x, model = job.x, job.model
    try:
        # The evaluation reads every split of the store, not only the fitted one.
        with job.working(), _client(args, report_folder=job.work, data_nbytes=job.store.images.nbytes) as client:
            if not args.quiet:
                print(f"distkm {__version__}: k={args.k} on {args.store} ({x.shape[0]:,} rows x {x.shape[1]}, "
                      f"{x.numblocks[0]} chunk{'s' if x.numblocks[0] != 1 else ''}), "
                      f"{len(client.scheduler_info()['workers'])} workers", flush=True)
            _, evaluation = job.run(evaluate=not args.no_evaluate, pictures=not args.no_pictures, seed=args.seed or 0,
                                    progress=None if args.quiet else _print_progress)
    except CheckpointError:  # resuming again would fail again: the error says what to do
        raise
    except BaseException:
        if job.kept:
            print(f"distkm: the fit so far is kept in {job.work}; run the same command with --resume to continue",
                  file=sys.stderr)
        raise
    job.publish()
    sizes = model.cluster_sizes_
    print(f"done in {time.perf_counter() - start:.1f} s: {model.n_iter_} iterations, inertia {model.inertia_:.6g}, "
          f"cluster sizes {sizes.min():,}..{sizes.max():,}")
    if evaluation is not None:
        print(evaluation.table())
    print(f"results in {args.out}/ (model.json, centroids.zarr, labels.zarr, report.md"
          f"{'' if args.no_evaluate else ', evaluation.json'}{'' if args.no_pictures else ', pictures/'})")


def _print_progress(event, **info):
    """The fit's progress lines on the terminal (``KMeans(verbose=1)`` prints scikit-learn's instead)."""
    if event == "checkpoint":
        resumed = info["resumed"]
        print(f"Checkpointing after every iteration to {info['path']}" if resumed is None else
              f"Resuming from {info['path']}: initialization {resumed[0] + 1}, iteration {resumed[1]}", flush=True)
    elif event == "init":
        print(f"Initialization {info['run'] + 1}/{info['n_init']} ({info['init']})", flush=True)
    elif event == "iteration":
        record = info["record"]
        if "pass" in record:  # a mini-batch step
            print(f"Step {record['iteration']} (pass {record['pass']}, {record['rows']:,} rows), inertia estimate "
                  f"{record['inertia']:.6g}, squared center shift {record['center_shift']:.3g}", flush=True)
            return
        relocated = f", empty clusters {record['relocated']} relocated" if record["relocated"] else ""
        skipped = f", {record['skipped']:.0%} of distances skipped" if record.get("skipped") else ""
        print(f"Iteration {record['iteration']}, inertia {record['inertia']:.6g}, squared center shift "
              f"{record['center_shift']:.3g} (tol {info['tol']:.3g}){skipped}{relocated}", flush=True)
    elif event == "end":
        state = "converged" if info["converged"] else "stopped at max_iter"
        print(f"{state} after {info['n_iter']} iterations, inertia {info['inertia']:.6g}", flush=True)


def _report_flags(parser):
    parser.add_argument("--no-evaluate", action="store_true",
                        help="skip the evaluation pass (scores, members, confusion matrix)")
    parser.add_argument("--no-pictures", action="store_true", help="write no PNG pictures")


# --------------------------------------------------------------------------- #
# distkm evaluate
# --------------------------------------------------------------------------- #
def _evaluate(args):
    from distkm.estimator import load_model
    from distkm.evaluation.report import report_run
    from distkm.io import locations
    from distkm.io.outputs import check_not_an_input, staged_locally
    from distkm.io.stores import open_store

    start = time.perf_counter()
    model, meta = load_model(args.run)
    data = args.data or meta.get("data", {}).get("path")
    if not data:
        raise ValueError(f"{args.run}/model.json does not say which store it was fitted on; pass --data STORE")
    for written in ("pictures", "evaluation.json", "report.md"):  # what evaluate replaces in the run
        check_not_an_input(locations.join(args.run, written), [data])
    store = open_store(data)
    if store.images.shape[1] != model.n_features_in_:
        raise ValueError(f"store {data!r} has {store.images.shape[1]} features per row, "
                         f"but the model was fitted on {model.n_features_in_}")
    # A run on object storage: the report is made in a local folder, then uploaded into it.
    with staged_locally(args.run) as folder:
        with _client(args, report_folder=folder, data_nbytes=store.images.nbytes):
            if not args.quiet:
                print(f"evaluating {args.run} on {data} ({store.images.shape[0]:,} rows)", flush=True)
            evaluation = report_run(folder, model, meta, store, pictures=not args.no_pictures, n_members=args.members,
                                    silhouette_sample=args.silhouette_sample, seed=args.seed, name=args.run)
        if locations.is_url(args.run):  # the new pictures replace the old ones, as a local evaluate's do
            locations.remove(locations.join(args.run, "pictures"))
    print(evaluation.table())
    print(f"done in {time.perf_counter() - start:.1f} s: {args.run}/evaluation.json, {args.run}/report.md"
          f"{'' if args.no_pictures else f', {args.run}/pictures/'}")


@contextmanager
def _client(args, report_folder=None, data_nbytes=None, report_file=None):
    """The command's Dask client; with --performance-report, a self-contained HTML report of the
    command's work is written into ``report_folder`` (or to ``report_file``) when the block ends.
    ``data_nbytes`` (the size of the data the command reads) lets a LocalCluster for small data run
    its workers as threads."""
    if report_folder is not None:
        report_file = Path(report_folder) / PERFORMANCE_REPORT
    from distkm.cluster.client import dask_client

    # The command reports failures in its own words, one line each: distributed's log records (a lost
    # scheduler's reconnection tracebacks, a failed task's ERROR block) only with --debug.
    with _distributed_logs(logging.INFO if args.debug else logging.CRITICAL), \
            dask_client(args.scheduler, cluster_config=args.cluster_config, n_workers=args.n_workers,
                        threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit,
                        data_nbytes=data_nbytes) as client:
        if not args.quiet:
            link = client.dashboard_link
            print(f"Dask dashboard: {link} (iterations and inertia: {link.rsplit('/', 1)[0]}/distkm)", flush=True)
        if getattr(args, "performance_report", False) and report_file is not None:
            from distributed import performance_report

            # mode="inline": bokeh's JavaScript inside the file, so it opens offline
            with performance_report(filename=str(report_file), mode="inline"):
                yield client
        else:
            yield client


@contextmanager
def _distributed_logs(level):
    """distributed's loggers at ``level`` while in the block (its config gives some a level of their own)."""
    loggers = [logging.getLogger(name) for name in
               ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, previous in zip(loggers, levels):
            logger.setLevel(previous)


def _local_output(out, command):
    """Refuse a URL where a command writes only to a filesystem (its inputs may still be URLs)."""
    from distkm.io import locations

    if locations.is_url(out):
        raise ValueError(f"distkm {command} writes its --out on a filesystem, not to {locations.public_url(out)!r}: "
                         "give a local (or shared) folder")


def _report_beside(out):
    """Where the performance report of a command whose output is a file or an array goes: beside it."""
    from distkm.io import locations

    if locations.is_url(out):  # an HTML page for the user to open: in the current folder, not the bucket
        return Path(f"{str(out).rstrip('/').rsplit('/', 1)[-1].split('.')[0]}-{PERFORMANCE_REPORT}")
    out = Path(out)
    return out.with_name(f"{out.stem}-{PERFORMANCE_REPORT}")


def _parse_init(value):
    if value in ("k-means++", "k-means||", "random"):
        return value
    from distkm.io import locations

    path = locations.local_path(value)
    if path.is_dir():
        from distkm.estimator import load_model

        return load_model(path)[0].cluster_centers_
    if path.suffix == ".npy" and path.is_file():
        return np.load(path, allow_pickle=False)
    raise ValueError(f"--init must be 'k-means++', 'k-means||', 'random', a .npy file or a run folder, got {value!r}")


def _parse_n_init(value):
    return value if value == "auto" else int(value)


# --------------------------------------------------------------------------- #
# distkm sweep
# --------------------------------------------------------------------------- #
def _sweep(args):
    from distkm.apps.sweep import COLUMNS, format_table, parse_ks, sweep, write_sweep
    from distkm.io.outputs import atomic_output, check_output_path, staged_locally
    from distkm.io.stores import open_store

    start = time.perf_counter()
    ks = parse_ks(args.k)
    store = open_store(args.store)
    split = args.split
    if split is None and "train" in store.attrs.get("splits", {}):
        split = "train"  # fit on train, score on the held-out rows too
    check_output_path(args.out, overwrite=args.overwrite, inputs=[args.store])
    fit_params = {"random_state": args.seed, "max_iter": args.max_iter, "tol": args.tol, "dtype": args.dtype,
                  "n_init": _parse_n_init(args.n_init)}
    # Only the client writes a sweep's folder (models, tables, pictures): built locally for a URL, then uploaded.
    with atomic_output(args.out, overwrite=args.overwrite, inputs=[args.store]) as built, \
            staged_locally(built) as tmp, _client(args, report_folder=tmp, data_nbytes=store.images.nbytes):
        if not args.quiet:
            print(f"sweeping k={','.join(map(str, ks))} on {args.store}"
                  f"{f' (fit on {split})' if split else ''}", flush=True)

        def show(row):
            if not args.quiet:
                shown = ", ".join(f"{header} {fmt.format(row[key])}" for key, header, fmt in COLUMNS[1:]
                                  if row.get(key) is not None)
                print(f"k={row['k']}: {shown}", flush=True)

        rows = sweep(store, ks, split=split, out=tmp, fit_params=fit_params, silhouette_sample=args.silhouette_sample,
                     seed=args.seed or 0, on_result=show, cache=_parse_cache(args.cache),
                     progress=None if args.quiet else _print_progress)
        write_sweep(tmp, rows, store=store, split=split, pictures=not args.no_pictures)
    print(format_table(rows))
    print(f"done in {time.perf_counter() - start:.1f} s: {args.out}/ (sweep.md, sweep.csv, sweep.json"
          f"{'' if args.no_pictures else ', elbow.png'}, one run folder per k)")


def _parse_cache(value):
    return {"auto": "auto", "yes": True, "no": False}[value]


def _cache_flag(parser, when):
    parser.add_argument("--cache", choices=["auto", "yes", "no"], default="auto",
                        help=f"keep the store's chunks in the workers' memory {when} "
                             "(auto: when they take at most distkm.cache-fraction of it, 0.4 by default)")


# --------------------------------------------------------------------------- #
# distkm quantize
# --------------------------------------------------------------------------- #
def _quantize(args):
    from distkm.apps.quantize import check_request, quantize

    start = time.perf_counter()
    _local_output(args.out, "quantize")
    check_request(args.source, args.out, args.k, overwrite=args.overwrite)  # before a cluster starts
    with _client(args, report_file=_report_beside(args.out)):
        if not args.quiet:
            print(f"quantizing {args.source} to {args.k} colours", flush=True)
        result = quantize(args.source, args.out, args.k, seed=args.seed, max_iter=args.max_iter,
                          chunk_pixels=args.chunk_pixels, overwrite=args.overwrite,
                          palette_picture=not args.no_pictures)
    images = result.outputs[0] if len(result.outputs) == 1 else f"{len(result.outputs)} images in {args.out}"
    print(f"wrote {images} ({result.n_pixels:,} pixels, {result.n_iter} iterations) and the palette "
          f"{', '.join(map(str, result.palette_files))} in {time.perf_counter() - start:.1f} s")
    order = np.argsort(-result.shares, kind="stable")
    print("palette: " + " ".join(f"#{'{:02x}{:02x}{:02x}'.format(*result.palette[j])} {result.shares[j]:.1%}"
                                 for j in order))


# --------------------------------------------------------------------------- #
# distkm augment
# --------------------------------------------------------------------------- #
def _augment(args):
    from distkm.apps.augment import augment_store, check_request
    from distkm.io import locations
    from distkm.io.outputs import OutputBusyError, partial_path

    shape = tuple(int(v) for v in args.image_shape.lower().split("x")) if args.image_shape else None
    settings = dict(seed=args.seed, split=args.split, chunk_rows=args.chunk_rows, compressor=args.compressor,
                    originals=not args.no_originals, strength=args.strength, image_shape=shape,
                    overwrite=args.overwrite)
    check_request(args.source, args.out, args.n, **settings)  # before a cluster starts
    try:
        with _client(args):
            if not args.quiet:
                print(f"generating {args.n:,} rows from {args.source} into {args.out}", flush=True)
            result = augment_store(args.source, args.out, args.n, progress=not args.quiet, **settings)
    except OutputBusyError:  # the partial store is the other command's
        raise
    except BaseException:
        if locations.exists(partial_path(args.out)):
            print(f"distkm: the chunks written so far are kept in {partial_path(args.out)}; run the same command "
                  "again to resume", file=sys.stderr)
        raise
    resumed = f", resumed with {result['resumed_chunks']} chunks already written" if result["resumed_chunks"] else ""
    print(f"wrote {args.out}: {result['rows']:,} rows in {result['seconds']:.1f} s "
          f"({result['rows_written'] / result['seconds']:,.0f} rows/s{resumed}); "
          f"{result['bytes_on_disk'] / 2**20:,.1f} MiB on disk, compression ratio {result['compression_ratio']:.2f}")


# --------------------------------------------------------------------------- #
# distkm predict
# --------------------------------------------------------------------------- #
def _predict(args):
    from distkm.engine.final import write_labels
    from distkm.estimator import load_model
    from distkm.io import locations
    from distkm.io.outputs import atomic_output, check_output_path
    from distkm.io.stores import open_store, zarr_location

    start = time.perf_counter()
    model, _ = load_model(args.run)
    store = open_store(args.store, split=args.split)
    inputs = [args.run, args.store]
    check_output_path(args.out, overwrite=args.overwrite, inputs=inputs)
    labels = model.predict(store.images)
    with _client(args, report_file=_report_beside(args.out)), \
            atomic_output(args.out, overwrite=args.overwrite, inputs=inputs) as tmp:
        if not args.quiet:
            print(f"assigning {store.images.shape[0]:,} rows of {args.store}",
                  flush=True)
        write_labels(zarr_location(tmp, read_only=False), labels, attrs={"model": locations.recorded(args.run),
                                         "store": locations.recorded(args.store), "split": args.split})
    print(f"wrote {args.out}: {labels.shape[0]:,} labels in {time.perf_counter() - start:.1f} s")


# --------------------------------------------------------------------------- #
# argument parsing
# --------------------------------------------------------------------------- #
def _location(text):
    """A path argument as distkm reads it: a URL as given, a local path without ``file://``."""
    from distkm.io import locations

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


def _parser():
    parser = argparse.ArgumentParser(prog="distkm", description="Out-of-core k-means on zarr image stores, with Dask.")
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
    ingest.set_defaults(func=_ingest)

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
    fit.set_defaults(func=_fit)

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
    evaluate.set_defaults(func=_evaluate)

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
    sweeper.set_defaults(func=_sweep)

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
    quant.set_defaults(func=_quantize)

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
    augment.set_defaults(func=_augment)

    predict = sub.add_parser("predict", parents=[common, cluster, report],
                             help="assign the rows of a store to a run's clusters")
    predict.add_argument("run", type=_location, help="run folder written by distkm fit")
    predict.add_argument("store", type=_location, help="zarr store with an 'images' array")
    predict.add_argument("--out", required=True, type=_location, help="zarr array of labels to create")
    predict.add_argument("--split", help="use only this split of the store")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace an existing labels array (one distkm wrote) once the new one is done")
    predict.set_defaults(func=_predict)
    return parser


if __name__ == "__main__":
    sys.exit(main())
