"""The `distkm` command end to end: real subprocesses, real stores, real LocalClusters."""

import json
import math
import os
import socket
from functools import partial

import dask
import numpy as np
import pytest
import zarr

from distkm import KMeans
from distkm.cli import main
from distkm.estimator import load_model
from tests.helpers import ROOT, distkm, random_rows

run = partial(distkm, check=True)  # a command that must succeed


def test_fit_writes_a_complete_run_folder(small_run, mnist_test_store):
    out, result = small_run
    assert sorted(p.name for p in out.iterdir()) == ["centroids.zarr", "evaluation.json", "labels.zarr",
                                                     "model.json", "pictures", "report.md"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["params"] == {"n_clusters": 10, "init": "k-means++", "n_init": "auto", "max_iter": 20,
                              "tol": 1e-4, "random_state": 0, "dtype": None, "algorithm": "auto"}
    assert meta["dtype"] == "float32"  # dtype=None: uint8 pixels are computed in float32
    assert meta["data"]["path"] == str(mnist_test_store.resolve()) and meta["data"]["n_samples"] == 10000
    assert meta["n_iter"] == len(meta["history"]) <= 20
    assert sum(meta["cluster_sizes"]) == 10000
    assert set(meta["versions"]) >= {"dask", "distributed", "numpy", "zarr", "scikit-learn", "distkm"}
    # The same seed through the Python API gives the same bits.
    with dask.config.set(scheduler="sync"):
        api = KMeans(10, random_state=0, max_iter=20).fit(mnist_test_store)
    centers = zarr.open_array(out / "centroids.zarr", mode="r")[...]
    assert centers.tobytes() == api.cluster_centers_.tobytes()
    assert meta["inertia"] == api.inertia_
    labels = zarr.open_array(out / "labels.zarr", mode="r")[...]
    np.testing.assert_array_equal(labels, api.labels_.compute())
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), meta["cluster_sizes"])
    assert "Iteration 1, inertia" in result.stdout and f"results in {out}" in result.stdout


def test_fit_on_an_existing_scheduler_gives_the_same_bits(small_run, cluster, mnist_test_store, tmp_path):
    out, _ = small_run
    result = run("fit", mnist_test_store, "--k", 10, "--out", tmp_path / "remote", "--seed", 0, "--max-iter", 20,
                 "--scheduler", cluster.scheduler_address)
    assert f"on {mnist_test_store}" in result.stdout and "2 workers" in result.stdout
    remote = zarr.open_array(tmp_path / "remote" / "centroids.zarr", mode="r")[...]
    assert remote.tobytes() == zarr.open_array(out / "centroids.zarr", mode="r")[...].tobytes()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "remote" / "labels.zarr", mode="r")[...],
                                  zarr.open_array(out / "labels.zarr", mode="r")[...])
    assert len(cluster.scheduler_info["workers"]) == 2  # the command closed only its client


@pytest.mark.parametrize("nbytes, processes", [(10_000 * 784, False), (None, True), (2**40, True)])
def test_local_cluster_runs_small_data_on_threads(nbytes, processes):
    """Small data: workers as threads of the command (started in ~0.05 s, not ~1.6 s); else worker processes."""
    from distkm.cluster.client import dask_client

    with dask.config.set({"distkm.local-cluster.dashboard-address": "127.0.0.1:0"}), \
            dask_client(n_workers=2, data_nbytes=nbytes) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        assert {w.split("://")[0] for w in workers} == ({"tcp"} if processes else {"inproc"})
        assert client.dashboard_link.startswith("http://127.0.0.1:")  # where it listens, also for threads
        assert (client.submit(os.getpid, pure=False).result() != os.getpid()) == processes


def test_local_cluster_sends_whole_passes_to_the_workers(tmp_path):
    """distkm's LocalCluster does not queue root tasks (distkm.local-cluster.worker-saturation), unless told to."""
    from distkm.cluster.client import dask_client

    config = tmp_path / "local.yaml"
    config.write_text("type: local\nlocal:\n  dashboard-address: 127.0.0.1:0\n  worker-saturation: 2\n")
    for setting, cluster_config, expected in ((None, None, math.inf), (1.1, None, 1.1), (None, config, 2)):
        overrides = {"distkm.local-cluster.dashboard-address": "127.0.0.1:0"}
        if setting is not None:
            overrides["distkm.local-cluster.worker-saturation"] = setting
        with dask.config.set(overrides), dask_client(n_workers=1, data_nbytes=0, cluster_config=cluster_config) as c:
            assert c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION) == expected
    assert dask.config.get("distributed.scheduler.worker-saturation") == 1.1  # dask's own default, untouched


def test_each_local_cluster_gets_its_own_worker_environment(monkeypatch):
    """distributed leaves a nanny's pre-spawn variables in the parent, where they would beat the next
    cluster's config: each cluster's worker processes must see its own, and the parent none of them."""
    from distkm.cluster.client import dask_client

    monkeypatch.delenv("DISTKM_TEST_VAR", raising=False)
    monkeypatch.setenv("DISTKM_USER_VAR", "from the shell")  # set before: it still wins, and stays
    for value in ("first", "second"):
        environ = {"DISTKM_TEST_VAR": value, "DISTKM_USER_VAR": "from the config"}
        with dask.config.set({"distkm.local-cluster.dashboard-address": "127.0.0.1:0",
                              "distkm.local-cluster.worker-environ": environ}), \
                dask_client(n_workers=1, data_nbytes=None) as client:
            seen = client.run(lambda: (os.environ.get("DISTKM_TEST_VAR"), os.environ.get("DISTKM_USER_VAR")))
            assert list(seen.values()) == [(value, "from the shell")]
        assert "DISTKM_TEST_VAR" not in os.environ and os.environ["DISTKM_USER_VAR"] == "from the shell"


def test_predict_assigns_new_data_out_of_core(small_run, mnist_store, tmp_path):
    out, _ = small_run
    target = tmp_path / "labels.zarr"
    run("predict", out, mnist_store, "--split", "train", "--out", target, "--n-workers", 2)
    labels = zarr.open_array(target, mode="r")
    assert labels.shape == (60000,) and labels.dtype == np.int32
    model, _ = load_model(out)
    train = zarr.open_array(mnist_store / "images", mode="r")[:60000]
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(labels[...], model.predict(train))


def test_model_loads_without_pickle_and_refuses_tampering(small_run, tmp_path):
    import shutil

    out, _ = small_run
    model, meta = load_model(out)
    assert model.cluster_centers_.shape == (10, 784) and model.n_iter_ == meta["n_iter"]
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    zarr.create_array(bad / "centroids.zarr", shape=(9, 784), dtype="f4", overwrite=True)
    with pytest.raises(ValueError, match=r"shape \(9, 784\), but model.json says \(10, 784\)"):
        load_model(bad)
    shutil.rmtree(bad / "centroids.zarr")
    with pytest.raises(FileNotFoundError, match="no centroids.zarr"):
        load_model(bad)
    (bad / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(bad)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bad_stores(tmp_path):
    zarr.open_group(tmp_path / "noimages.zarr", mode="w").create_array("pixels", shape=(4, 2), dtype="u1")
    zarr.open_group(tmp_path / "3d.zarr", mode="w").create_array("images", shape=(4, 2, 2), dtype="u1")
    nan = zarr.open_group(tmp_path / "nan.zarr", mode="w").create_array("images", shape=(20, 3), dtype="f4")
    values = np.arange(60, dtype="f4").reshape(20, 3)
    values[7, 1] = np.nan
    nan[:] = values
    np.save(tmp_path / "init-wrong.npy", np.zeros((3, 784)))
    (tmp_path / "existing").mkdir()


@pytest.mark.parametrize("args, message", [
    (["fit", "{tmp}/missing.zarr", "--k", "3"], "no zarr store at"),
    (["fit", "{tmp}/noimages.zarr", "--k", "3"], "has no 'images' array (it holds: pixels)"),
    (["fit", "{tmp}/3d.zarr", "--k", "3"], "must be 2-D (n_samples, n_features), got shape (4, 2, 2)"),
    (["fit", "{tmp}/nan.zarr", "--k", "3", "--n-workers", "1"], "X contains 1 NaN or infinite value(s)"),
    (["sweep", "{tmp}/nan.zarr", "--k", "2,3", "--n-workers", "1"], "X contains 1 NaN or infinite value(s)"),
    (["fit", "{store}", "--k", "0"], "'n_clusters' parameter of KMeans must be an int in the range [1, inf)"),
    (["fit", "{store}", "--k", "10001"], "n_samples=10000 should be >= n_clusters=10001."),
    (["fit", "{store}", "--k", "10", "--init", "{tmp}/init-wrong.npy"],
     "The shape of the initial centers (3, 784) does not match the number of clusters 10"),
    (["fit", "{store}", "--k", "10", "--max-iter", "0"], "'max_iter' parameter"),
    (["fit", "{store}", "--k", "3", "--scheduler", "tcp://127.0.0.1:{port}"], "cannot reach the Dask scheduler at"),
    (["fit", "{store}", "--k", "3", "--out", "{tmp}/existing"], "already exists; pass --overwrite"),
    (["predict", "{tmp}/existing", "{store}"], "is not a distkm run folder"),
    (["ingest", "mnist", "--source", "{tmp}"], "mnist IDX files not found (looked in"),
])
def test_bad_input_one_line_error_nonzero_exit_nothing_written(tmp_path, capsys, mnist_test_store, args, message):
    bad_stores(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    fmt = {"tmp": tmp_path, "store": mnist_test_store, "port": free_port()}
    argv = [a.format(**fmt) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    with dask.config.set({"distkm.scheduler-timeout": "3s"}):
        code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("distkm: error: "), err
    assert message in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing left behind


@pytest.mark.parametrize("args, message", [
    (["augment", "{tmp}/missing.zarr", "--n", "10", "--out", "{tmp}/aug.zarr"], "no zarr store at"),
    (["augment", "{store}", "--n", "10", "--split", "nope", "--out", "{tmp}/aug.zarr"], "has no split 'nope'"),
    (["augment", "{store}", "--n", "10", "--out", "{store}/aug.zarr"], "inside"),
    (["quantize", "{tmp}/missing.png", "--k", "2", "--out", "{tmp}/q.png"], "no image or folder at"),
    (["quantize", "{tmp}/tiny.png", "--k", "5", "--out", "{tmp}/q.png"], "4 pixels, fewer than k=5 colours"),
    (["quantize", "{tmp}/tiny.png", "--k", "2", "--out", "{tmp}/q.txt"], "out must name an image file"),
])
def test_bad_input_is_refused_before_a_cluster_starts(tmp_path, capsys, mnist_test_store, args, message):
    """What can be checked from metadata and headers is, before any worker starts (no dashboard line)."""
    from PIL import Image

    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([a.format(tmp=tmp_path, store=mnist_test_store) for a in args])
    out, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and err.startswith("distkm: error: ") and message in err, err
    assert "Dask dashboard" not in out and "generating" not in out and "quantizing" not in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_overwrite_replaces_the_run_once_complete(tmp_path, mnist_test_store, mnist_test):
    out = tmp_path / "run"
    np.save(tmp_path / "init.npy", random_rows(mnist_test[0], 4))
    with dask.config.set({"distkm.local-cluster.n-workers": 1}):
        fit = ["fit", str(mnist_test_store), "--k", "4", "--out", str(out), "--quiet", "--max-iter", "3",
               "--no-evaluate"]
        assert main(fit + ["--no-pictures"]) == 0  # an earlier run of distkm's: --overwrite may replace it
        (out / "old-file").write_text("old")
        assert main(fit + ["--overwrite", "--init", str(tmp_path / "init.npy")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["centroids.zarr", "labels.zarr", "model.json", "pictures",
                                                     "report.md"]
    assert json.loads((out / "model.json").read_text())["params"]["init"] == "array"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init.npy", "run"]


def test_fit_with_kmeans_parallel_init_and_minibatch(tmp_path, mnist_test_store):
    out = tmp_path / "mb"
    assert main(["fit", str(mnist_test_store), "--k", "5", "--init", "k-means||", "--algorithm", "minibatch",
                 "--max-iter", "2", "--seed", "1", "--out", str(out), "--quiet", "--no-pictures"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["params"]["algorithm"] == "minibatch" and meta["params"]["init"] == "k-means||"
    assert sum(meta["cluster_sizes"]) == 10000 and {h["pass"] for h in meta["history"]} <= {1, 2}


def test_ingest_command(tmp_path):
    from tests.helpers import MNIST_DIR

    result = run("ingest", "mnist", "--source", MNIST_DIR, "--out", tmp_path / "m.zarr", "--chunk-rows", 30000)
    assert "train 60,000, test 10,000 rows" in result.stdout
    assert zarr.open_array(tmp_path / "m.zarr" / "images", mode="r").chunks == (30000, 784)
    again = run("ingest", "mnist", "--source", MNIST_DIR, "--out", tmp_path / "m.zarr", check=False)
    assert again.returncode == 1 and "already exists; pass --overwrite" in again.stderr


@pytest.mark.parametrize("content, message", [
    (None, "cluster config '{path}' not found"),
    ("type: local\nlocal: [unclosed\n", "is not valid YAML at line 3: expected ',' or ']'"),
    ("type: moon\n", "unknown type 'moon'; expected one of local, address"),
    ("type: slurm\nslurm: {cores: 2}\n", "slurm.memory is required (e.g. memory: 4GiB (per SLURM job))"),
    ("type: slurm\nslurm: {cores: two, memory: 4GiB}\n", "slurm.cores must be of type int, got 'two'"),
    ("type: tls\ntls: {scheduler: tls://h:1, ca-file: ca.pem, cert: c.pem, key: k.pem}\n",
     "tls.ca-file file '{dir}/ca.pem' not found"),
    ("type: tls\ntls: {scheduler: tcp://h:1, ca-file: a, cert: b, key: c}\n", "tls.scheduler must be a tls:// address"),
    ("type: ssh\nssh: {hosts: [one]}\n", "ssh.hosts needs at least two hosts"),
    ("type: address\naddress: {}\n", "address.scheduler is required (e.g. scheduler: tcp://scheduler-host:8786)"),
    ("type: local\nlocal:\n  n-worker: 2\n", "unknown field local.n-worker"),
])
def test_bad_cluster_config(tmp_path, capsys, mnist_test_store, content, message):
    path = tmp_path / "cluster.yaml"
    if content is not None:
        path.write_text(content)
    code = main(["fit", str(mnist_test_store), "--k", "3", "--out", str(tmp_path / "run"),
                 "--cluster-config", str(path)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and message.format(path=path, dir=tmp_path) in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_cluster_configs_shipped_in_the_repository_work(tmp_path, cluster, mnist_test_store):

    configs = ROOT / "cluster-configs"
    local = tmp_path / "local.yaml"
    local.write_text((configs / "local.yaml").read_text().replace('"127.0.0.1:8787"', "null"))
    address = tmp_path / "address.yaml"
    address.write_text((configs / "address.yaml").read_text().replace("tcp://127.0.0.1:8786",
                                                                       cluster.scheduler_address))
    for name, config in (("local", local), ("address", address)):
        result = run("fit", mnist_test_store, "--k", 4, "--seed", 1, "--max-iter", 3, "--out", tmp_path / name,
                     "--cluster-config", config)
        assert "2 workers" in result.stdout
    a, b = (zarr.open_array(tmp_path / n / "centroids.zarr", mode="r")[...] for n in ("local", "address"))
    assert a.tobytes() == b.tobytes()


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path, mnist_test_store, capsys):
    """The library says n, overwrite=True, resume=True; the command line says --n, --overwrite, --resume."""
    from distkm.apps.augment import augment_store

    with pytest.raises(ValueError, match="^n must be a positive number of rows"):
        augment_store(mnist_test_store, tmp_path / "a.zarr", n=0)
    assert main(["augment", str(mnist_test_store), "--n", "0", "--out", str(tmp_path / "a.zarr"), "--quiet",
                 "--n-workers", "1"]) == 1
    assert "distkm: error: --n must be a positive number of rows" in capsys.readouterr().err


def test_every_option_says_what_it_does_and_its_default():
    from distkm.cli.errors import _subparsers
    from distkm.cli.parser import build_parser

    for command in _subparsers(build_parser()):
        text = " ".join(command.format_help().split())  # wrapped lines joined
        for action in command._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{command.prog} {action.option_strings or action.dest} has no help"
            if action.option_strings and action.default not in (None, False):
                assert "default" in command._get_formatter()._get_help_string(action), (command.prog, action.dest)
        assert "(default: 300)" in text or "--max-iter" not in text


def test_progress_in_a_log_file_is_plain_lines_and_a_sweep_shows_its_iterations(tmp_path, mnist_test_store):
    """Not a terminal (output piped to a file): no carriage returns, a line per tenth of a long pass."""
    result = run("augment", mnist_test_store, "--n", "30000", "--out", tmp_path / "a.zarr", "--chunk-rows", "1000",
                 "--n-workers", 1)
    assert "\r" not in result.stderr and "\r" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("augment: ")]
    assert lines[-1] == "augment: 30,000 of 30,000 rows" and 5 <= len(lines) <= 10, result.stderr
    swept = run("sweep", mnist_test_store, "--k", "2,3", "--out", tmp_path / "sweep", "--max-iter", "3",
                "--no-pictures", "--silhouette-sample", "0", "--n-workers", 1)
    assert swept.stdout.count("Iteration 1, inertia") == 2 and "\r" not in swept.stdout, swept.stdout


@pytest.mark.parametrize("args, problem, help_of", [
    (["fit", "store.zarr", "--k", "x", "--out", "run"], "argument --k: invalid int value: 'x'", "distkm fit"),
    (["fit", "store.zarr"], "the following arguments are required: --k, --out", "distkm fit"),
    (["sweep", "store.zarr", "--k", "2,3", "--out", "s", "--n-workers", "0"], "argument --n-workers: must be a "
     "positive integer, got 0", "distkm sweep"),
    (["fitt", "store.zarr"], "argument COMMAND: invalid choice: 'fitt'", "distkm"),
])
def test_a_usage_mistake_is_one_line_naming_it_and_the_help(args, problem, help_of):
    result = distkm(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and problem in result.stderr, result.stderr
    assert result.stderr.startswith(f"{help_of}: error: ") and result.stderr.endswith(f"; see '{help_of} --help'\n")
