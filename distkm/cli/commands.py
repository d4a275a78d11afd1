"""The ``distkm`` commands: each calls its application in :mod:`distkm.apps` on a Dask client, and prints.

Each command gets the parsed arguments (:mod:`distkm.cli.parser`), starts
or joins the Dask cluster the options name, runs the application, and
prints what it did. Outputs are written to a temporary folder and renamed
into place only when complete (the applications see to that).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from distributed import performance_report

from distkm import __version__
from distkm.apps.augment import augment_store
from distkm.apps.augment import check_request as check_augment
from distkm.apps.evaluate import EvaluateJob
from distkm.apps.fit import FitJob
from distkm.apps.ingest import ingest_image_folder
from distkm.apps.predict import PredictJob
from distkm.apps.quantize import check_request as check_quantize
from distkm.apps.quantize import quantize as quantize_images
from distkm.apps.sweep import COLUMNS, format_table, parse_ks, sweep_folder, write_sweep
from distkm.apps.sweep import sweep as sweep_store
from distkm.cli.errors import distributed_logs
from distkm.cli.parser import PERFORMANCE_REPORT
from distkm.cluster.client import dask_client
from distkm.estimator import load_model
from distkm.io import locations
from distkm.io.checkpoint import CheckpointError
from distkm.io.datasets import ingest_idx
from distkm.io.outputs import OutputBusyError, check_output_path, partial_path
from distkm.io.stores import open_store


def shown(location):
    """A path or URL as it may be printed: without the user or password a URL may carry."""
    return locations.public_url(location)


def ingest(args):
    """``distkm ingest``: MNIST, Fashion-MNIST or a folder of images into a store."""
    if args.dataset == "folder":
        return _ingest_folder(args)
    start = time.perf_counter()
    attrs = ingest_idx(args.dataset, args.out, source=args.source, chunk_rows=args.chunk_rows,
                       compressor=args.compressor, overwrite=args.overwrite)
    splits = ", ".join(f"{name} {stop - begin:,}" for name, (begin, stop) in attrs["splits"].items())
    print(f"wrote {shown(args.out)}: {args.dataset} ({splits} rows; checksums verified against "
          f"{attrs['source']['checksums']}) in {time.perf_counter() - start:.1f} s")


def _ingest_folder(args):
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
    print(f"wrote {shown(args.out)}: {attrs['source']['files']:,} images as {'x'.join(map(str, attrs['image_shape']))} "
          f"rows ({args.mode}, {args.fit}{labels}) in {time.perf_counter() - start:.1f} s")


def fit(args):
    """``distkm fit``: a store into a run folder, with progress lines."""
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
                print(f"distkm {__version__}: k={args.k} on {shown(args.store)} ({x.shape[0]:,} rows x {x.shape[1]}, "
                      f"{x.numblocks[0]} chunk{'s' if x.numblocks[0] != 1 else ''}), "
                      f"{len(client.scheduler_info()['workers'])} workers", flush=True)
            _, evaluation = job.run(evaluate=not args.no_evaluate, pictures=not args.no_pictures, seed=args.seed or 0,
                                    progress=None if args.quiet else _print_progress)
    except CheckpointError:  # resuming again would fail again: the error says what to do
        raise
    except BaseException:
        if job.kept:
            print(f"distkm: the fit so far is kept in {shown(job.output.work)}; run the same command with --resume "
                  "to continue",
                  file=sys.stderr)
        raise
    job.publish()
    sizes = model.cluster_sizes_
    print(f"done in {time.perf_counter() - start:.1f} s: {model.n_iter_} iterations, inertia {model.inertia_:.6g}, "
          f"cluster sizes {sizes.min():,}..{sizes.max():,}")
    if evaluation is not None:
        print(evaluation.table())
    print(f"results in {shown(args.out)}/ (model.json, centroids.zarr, labels.zarr, report.md"
          f"{'' if args.no_evaluate else ', evaluation.json'}{'' if args.no_pictures else ', pictures/'})")


def _print_progress(event, **info):
    """The fit's progress lines on the terminal (``KMeans(verbose=1)`` prints scikit-learn's instead)."""
    if event == "checkpoint":
        resumed, path = info["resumed"], shown(info["path"])
        print(f"Checkpointing after every iteration to {path}" if resumed is None else
              f"Resuming from {path}: initialization {resumed[0] + 1}, iteration {resumed[1]}", flush=True)
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


def evaluate(args):
    """``distkm evaluate``: a run scored on every split of its store, with pictures and report."""
    start = time.perf_counter()
    job = EvaluateJob(args.run, args.data)
    with job.staged() as folder, _client(args, report_folder=folder, data_nbytes=job.store.images.nbytes):
        if not args.quiet:
            print(f"evaluating {shown(args.run)} on {shown(job.data)} ({job.store.images.shape[0]:,} rows)",
                  flush=True)
        evaluation = job.run(folder, pictures=not args.no_pictures, n_members=args.members,
                             silhouette_sample=args.silhouette_sample, seed=args.seed)
    print(evaluation.table())
    print(f"done in {time.perf_counter() - start:.1f} s: {shown(args.run)}/evaluation.json, {shown(args.run)}/report.md"
          f"{'' if args.no_pictures else f', {shown(args.run)}/pictures/'}")


@contextmanager
def _client(args, report_folder=None, data_nbytes=None, report_file=None):
    """The command's Dask client; with --performance-report, a self-contained HTML report of the
    command's work is written into ``report_folder`` (or to ``report_file``) when the block ends.
    ``data_nbytes`` (the size of the data the command reads) lets a LocalCluster for small data run
    its workers as threads."""
    if report_folder is not None:
        report_file = Path(report_folder) / PERFORMANCE_REPORT
    # The command reports failures in its own words, one line each: distributed's log records (a lost
    # scheduler's reconnection tracebacks, a failed task's ERROR block) only with --debug.
    with distributed_logs(logging.INFO if args.debug else logging.CRITICAL), \
            dask_client(args.scheduler, cluster_config=args.cluster_config, n_workers=args.n_workers,
                        threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit,
                        data_nbytes=data_nbytes) as client:
        if not args.quiet:
            link = client.dashboard_link
            print(f"Dask dashboard: {link} (iterations and inertia: {link.rsplit('/', 1)[0]}/distkm)", flush=True)
        if getattr(args, "performance_report", False) and report_file is not None:
            # mode="inline": bokeh's JavaScript inside the file, so it opens offline
            with performance_report(filename=str(report_file), mode="inline"):
                try:
                    yield client
                finally:  # written when this block ends, into a folder that may be made late (a fit into a URL)
                    report_file.parent.mkdir(parents=True, exist_ok=True)
        else:
            yield client


def _local_output(out, command):
    """Refuse a URL where a command writes only to a filesystem (its inputs may still be URLs)."""
    if locations.is_url(out):
        raise ValueError(f"distkm {command} writes its --out on a filesystem, not to {locations.public_url(out)!r}: "
                         "give a local (or shared) folder")


def _report_beside(out):
    """Where the performance report of a command whose output is a file or an array goes: beside it."""
    if locations.is_url(out):  # an HTML page for the user to open: in the current folder, not the bucket
        return Path(f"{str(out).rstrip('/').rsplit('/', 1)[-1].split('.')[0]}-{PERFORMANCE_REPORT}")
    out = Path(out)
    return out.with_name(f"{out.stem}-{PERFORMANCE_REPORT}")


def _parse_init(value):
    if value in ("k-means++", "k-means||", "random"):
        return value
    path = locations.local_path(value)
    if path.is_dir():
        return load_model(path)[0].cluster_centers_
    if path.suffix == ".npy" and path.is_file():
        return np.load(path, allow_pickle=False)
    raise ValueError(f"--init must be 'k-means++', 'k-means||', 'random', a .npy file or a run folder, got {value!r}")


def _parse_n_init(value):
    return value if value == "auto" else int(value)


def sweep(args):
    """``distkm sweep``: several k fitted and scored on one store, a table and an elbow plot."""
    start = time.perf_counter()
    ks = parse_ks(args.k)
    store = open_store(args.store)
    split = args.split
    if split is None and "train" in store.attrs.get("splits", {}):
        split = "train"  # fit on train, score on the held-out rows too
    check_output_path(args.out, overwrite=args.overwrite, inputs=[args.store])
    fit_params = {"random_state": args.seed, "max_iter": args.max_iter, "tol": args.tol, "dtype": args.dtype,
                  "n_init": _parse_n_init(args.n_init)}
    with sweep_folder(args.out, overwrite=args.overwrite, inputs=[args.store]) as tmp, \
            _client(args, report_folder=tmp, data_nbytes=store.images.nbytes):
        if not args.quiet:
            print(f"sweeping k={','.join(map(str, ks))} on {shown(args.store)}"
                  f"{f' (fit on {split})' if split else ''}", flush=True)

        def show(row):
            if not args.quiet:
                shown = ", ".join(f"{header} {fmt.format(row[key])}" for key, header, fmt in COLUMNS[1:]
                                  if row.get(key) is not None)
                print(f"k={row['k']}: {shown}", flush=True)

        rows = sweep_store(store, ks, split=split, out=tmp, fit_params=fit_params,
                           silhouette_sample=args.silhouette_sample, seed=args.seed or 0, on_result=show,
                           cache=_parse_cache(args.cache), progress=None if args.quiet else _print_progress)
        write_sweep(tmp, rows, store=store, split=split, pictures=not args.no_pictures)
    print(format_table(rows))
    print(f"done in {time.perf_counter() - start:.1f} s: {shown(args.out)}/ (sweep.md, sweep.csv, sweep.json"
          f"{'' if args.no_pictures else ', elbow.png'}, one run folder per k)")


def _parse_cache(value):
    return {"auto": "auto", "yes": True, "no": False}[value]


def quantize(args):
    """``distkm quantize``: an image, or a folder of images, in k colours."""
    start = time.perf_counter()
    _local_output(args.out, "quantize")
    check_quantize(args.source, args.out, args.k, overwrite=args.overwrite)  # before a cluster starts
    with _client(args, report_file=_report_beside(args.out)):
        if not args.quiet:
            print(f"quantizing {shown(args.source)} to {args.k} colours", flush=True)
        result = quantize_images(args.source, args.out, args.k, seed=args.seed, max_iter=args.max_iter,
                          chunk_pixels=args.chunk_pixels, overwrite=args.overwrite,
                          palette_picture=not args.no_pictures)
    images = result.outputs[0] if len(result.outputs) == 1 else f"{len(result.outputs)} images in {shown(args.out)}"
    print(f"wrote {images} ({result.n_pixels:,} pixels, {result.n_iter} iterations) and the palette "
          f"{', '.join(map(str, result.palette_files))} in {time.perf_counter() - start:.1f} s")
    order = np.argsort(-result.shares, kind="stable")
    print("palette: " + " ".join(f"#{'{:02x}{:02x}{:02x}'.format(*result.palette[j])} {result.shares[j]:.1%}"
                                 for j in order))


def augment(args):
    """``distkm augment``: a bigger store made by distorting a store's images (resumable)."""
    shape = tuple(int(v) for v in args.image_shape.lower().split("x")) if args.image_shape else None
    settings = dict(seed=args.seed, split=args.split, chunk_rows=args.chunk_rows, compressor=args.compressor,
                    originals=not args.no_originals, strength=args.strength, image_shape=shape,
                    overwrite=args.overwrite)
    check_augment(args.source, args.out, args.n, **settings)  # before a cluster starts
    try:
        with _client(args):
            if not args.quiet:
                print(f"generating {args.n:,} rows from {shown(args.source)} into {shown(args.out)}", flush=True)
            result = augment_store(args.source, args.out, args.n, progress=not args.quiet, **settings)
    except OutputBusyError:  # the partial store is the other command's
        raise
    except BaseException:
        if locations.exists(partial_path(args.out)):
            print(f"distkm: the chunks written so far are kept in {shown(partial_path(args.out))}; run the same "
                  "command again to resume", file=sys.stderr)
        raise
    resumed = f", resumed with {result['resumed_chunks']} chunks already written" if result["resumed_chunks"] else ""
    print(f"wrote {shown(args.out)}: {result['rows']:,} rows in {result['seconds']:.1f} s "
          f"({result['rows_written'] / result['seconds']:,.0f} rows/s{resumed}); "
          f"{result['bytes_on_disk'] / 2**20:,.1f} MiB on disk, compression ratio {result['compression_ratio']:.2f}")


def predict(args):
    """``distkm predict``: the rows of a store assigned to a run's clusters, as a labels array."""
    start = time.perf_counter()
    job = PredictJob(args.run, args.store, args.out, split=args.split, overwrite=args.overwrite)
    with _client(args, report_file=_report_beside(args.out)):
        if not args.quiet:
            print(f"assigning {job.store.images.shape[0]:,} rows of {shown(args.store)}", flush=True)
        n = job.run()
    print(f"wrote {shown(args.out)}: {n:,} labels in {time.perf_counter() - start:.1f} s")
