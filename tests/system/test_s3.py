"""Stores and runs on object storage, against a real S3-compatible server (moto's) on 127.0.0.1.

The server checks credentials (see ``services.s3_server``); every command is
the real ``distkm`` in a subprocess, configured only through the standard AWS
environment variables, as a user's would be.
"""

import hashlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from distkm import KMeans
from distkm.io.stores import open_store
from tests.helpers import DISTKM, distkm, random_rows
from tests.services import free_port, s3_server

s3fs = pytest.importorskip("s3fs", reason="S3 tests need s3fs and moto (pip install -e '.[test]')")
pytest.importorskip("moto", reason="S3 tests need s3fs and moto (pip install -e '.[test]')")

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server, with its AWS variables set in this process (for the API and the workers it starts)."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server, pytest.MonkeyPatch.context() as patch:
        for name, value in server.environ().items():
            patch.setenv(name, value)
        # fsspec keeps filesystems by their arguments, not by the environment they read: one made for an
        # earlier server of this process (pytest-xdist may come back to this module) would call a dead port.
        s3fs.S3FileSystem.clear_instance_cache()
        yield server
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3_client(s3):
    """Two worker processes that read S3 with the same variables (their environment is inherited)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client




def objects(s3, prefix=""):
    listing = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture(scope="module")
def s3_mnist(s3):
    """`distkm ingest mnist` straight into the bucket."""
    url = f"s3://{s3.bucket}/mnist.zarr"
    result = distkm("ingest", "mnist", "--out", url, "--quiet")
    assert result.returncode == 0, result.stderr
    return url


def test_ingest_to_s3_reads_back_the_arrays_of_disk(s3, s3_mnist, mnist_store):
    remote, local = open_store(s3_mnist), open_store(mnist_store)
    assert remote.attrs["splits"] == local.attrs["splits"] == {"train": [0, 60000], "test": [60000, 70000]}
    np.testing.assert_array_equal(remote.images.compute(), local.images.compute())
    np.testing.assert_array_equal(remote.labels.compute(), local.labels.compute())
    # Built under a hidden prefix and copied into place: nothing of it is left beside the store.
    assert not [key for key in objects(s3) if key.startswith(".")]


def test_fit_from_s3_is_bit_identical_to_the_same_store_on_disk(s3, s3_mnist, mnist_store, s3_client):
    x = open_store(mnist_store, split="test").images.compute()
    init = random_rows(x, 10, seed=3)
    fits = {}
    for name, where in {"s3": s3_mnist, "disk": str(mnist_store)}.items():
        store = open_store(where, split="test")
        fits[name] = KMeans(n_clusters=10, init=init, n_init=1, max_iter=30, tol=0).fit(store.images)
    assert fits["s3"].n_iter_ == fits["disk"].n_iter_ == 30
    np.testing.assert_array_equal(fits["s3"].cluster_centers_, fits["disk"].cluster_centers_)
    np.testing.assert_array_equal(fits["s3"].labels_.compute(), fits["disk"].labels_.compute())
    assert fits["s3"].inertia_ == fits["disk"].inertia_
    # The API takes the URL itself too.
    by_url = KMeans(n_clusters=10, init=random_rows(open_store(s3_mnist).images.compute(), 10, seed=3), n_init=1,
                    max_iter=3, tol=0).fit(s3_mnist)
    assert by_url.labels_.shape == (70000,)


def test_cli_run_on_s3_then_predict_and_evaluate_it(s3, s3_mnist, tmp_path):
    run = f"s3://{s3.bucket}/runs/k5"
    result = distkm("fit", s3_mnist, "--split", "test", "--k", 5, "--seed", 0, "--max-iter", 5, "--out", run,
                    "--quiet")
    assert result.returncode == 0, result.stderr
    names = {key.split("/")[2] for key in objects(s3, "runs/k5/")}
    assert names == {"model.json", "centroids.zarr", "labels.zarr", "evaluation.json", "report.md", "pictures"}
    meta = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="runs/k5/model.json")["Body"].read())
    assert meta["data"]["path"] == s3_mnist and meta["n_clusters"] == 5
    labels = zarr.open_array(f"s3://{s3.bucket}/runs/k5/labels.zarr", mode="r")[:]
    result = distkm("predict", run, s3_mnist, "--split", "test", "--out", f"s3://{s3.bucket}/pred.zarr", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr  # no worker's "Unclosed client session"
    np.testing.assert_array_equal(zarr.open_array(f"s3://{s3.bucket}/pred.zarr", mode="r")[:], labels)
    result = distkm("evaluate", run, "--quiet", "--no-pictures")
    assert result.returncode == 0, result.stderr
    evaluation = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="runs/k5/evaluation.json")["Body"].read())
    assert evaluation["splits"]["test"]["rows"] == 10000
    # Credentials are never written: not in any object of the run, nor in what the commands printed.
    for key in objects(s3, "runs/k5/"):
        body = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        assert s3.secret.encode() not in body and s3.key.encode() not in body, key
    assert s3.secret not in result.stdout + result.stderr
    # An output never replaces its input, on object storage too.
    refused = distkm("fit", s3_mnist, "--k", 2, "--out", s3_mnist, "--overwrite", "--quiet")
    assert refused.returncode == 1 and "is the input" in refused.stderr


def bucket_md5(s3, prefix=""):
    """md5 of every object under ``prefix``."""
    return {key: hashlib.md5(s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()).hexdigest()
            for key in objects(s3, prefix)}


def test_the_input_under_another_protocol_name_is_refused(s3, s3_mnist):
    """s3a:// is s3:// (one fsspec filesystem): an output over the input store or over the model's run,
    spelled with the other name, is refused in one line, and every object is left as it was."""
    run = f"s3://{s3.bucket}/runs/alias"
    result = distkm("fit", s3_mnist, "--split", "test", "--k", 2, "--seed", 0, "--max-iter", 2, "--out", run,
                    "--quiet", "--no-evaluate", "--no-pictures")
    assert result.returncode == 0, result.stderr
    before = bucket_md5(s3)
    alias_store, alias_run = s3_mnist.replace("s3://", "s3a://"), run.replace("s3://", "s3a://")
    for args, expected in [
        (["fit", s3_mnist, "--split", "test", "--k", 2, "--out", alias_store, "--overwrite"], "is the input"),
        (["fit", alias_store, "--split", "test", "--k", 2, "--out", s3_mnist, "--overwrite"], "is the input"),
        (["fit", alias_store, "--split", "test", "--k", 2, "--out", f"{s3_mnist}/run"], "lies inside the input"),
        (["predict", run, s3_mnist, "--split", "test", "--out", alias_run, "--overwrite"], "is the input"),
        (["predict", alias_run, s3_mnist, "--split", "test", "--out", run, "--overwrite"], "is the input"),
        (["augment", alias_store, "--n", 20000, "--out", s3_mnist, "--overwrite"], "is the input"),
    ]:
        result = distkm(*args, "--quiet")
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and expected in result.stderr, \
            (args, result.stderr)
    assert bucket_md5(s3) == before


def test_augment_to_s3_matches_augment_on_disk(s3, s3_mnist, mnist_store, tmp_path):
    args = ["--split", "train", "--n", 3000, "--seed", 5, "--chunk-rows", 1000, "--quiet"]
    remote, local = f"s3://{s3.bucket}/aug.zarr", tmp_path / "aug.zarr"
    assert distkm("augment", s3_mnist, "--out", remote, *args).returncode == 0
    assert distkm("augment", mnist_store, "--out", local, *args).returncode == 0
    a, b = open_store(remote), open_store(local)
    np.testing.assert_array_equal(a.images.compute(), b.images.compute())
    np.testing.assert_array_equal(a.labels.compute(), b.labels.compute())
    assert a.attrs["splits"] == b.attrs["splits"]


def test_interrupted_augment_to_s3_resumes(s3, s3_mnist):
    """An augment killed midway keeps its chunks in OUT.partial; the same command finishes them, same bytes."""
    out, whole = f"s3://{s3.bucket}/aug-resumed.zarr", f"s3://{s3.bucket}/aug-whole.zarr"
    # From the train split: the test split's 10 chunks are carried after the 8 generated ones (carrying the
    # 60 of train from a test split took minutes of moto's time and proves nothing more).
    args = ["augment", s3_mnist, "--split", "train", "--n", 8000, "--seed", 2, "--chunk-rows", 1000, "--quiet",
            "--n-workers", 1]
    first = subprocess.Popen([DISTKM, *map(str, args), "--out", out],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(objects(s3, "aug-resumed.zarr.partial/images/c/")) < 3 and first.poll() is None:
        assert time.monotonic() < deadline, "no chunk written in 120 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the command and its workers, mid-generation
    first.wait()
    written = len(objects(s3, "aug-resumed.zarr.partial/images/c/"))
    assert written >= 3 and not objects(s3, "aug-resumed.zarr/")
    second = distkm(*args[:-3], "--out", out)
    assert second.returncode == 0, second.stderr
    assert "resumed with" in second.stdout
    assert distkm(*args, "--out", whole).returncode == 0
    assert written < len(objects(s3, "aug-whole.zarr/images/c/"))  # it was killed midway, not at the end
    np.testing.assert_array_equal(open_store(out).images.compute(), open_store(whole).images.compute())
    assert not objects(s3, "aug-resumed.zarr.partial/")


def test_a_fit_into_the_bucket_killed_midway_resumes_on_another_machine(s3, s3_mnist, tmp_path):
    """Killed mid-iterations, a fit into s3:// keeps its checkpoint in OUT.partial in the bucket; the same command
    with --resume, from another temporary folder (as another machine), ends with the centroids of an
    uninterrupted fit, and nothing is left: no prefix in the bucket, no folder on either "machine"."""
    run, whole = f"s3://{s3.bucket}/runs/killed", f"s3://{s3.bucket}/runs/unkilled"
    args = ["fit", s3_mnist, "--split", "test", "--k", 20, "--seed", 1, "--max-iter", 300, "--tol", 0,
            "--no-pictures", "--no-evaluate", "--n-workers", 1]
    store_before = bucket_md5(s3, "mnist.zarr/")
    machines = [tmp_path / "machine-1", tmp_path / "machine-2"]
    for folder in machines:
        folder.mkdir()
    # One iteration a task, so one checkpoint an iteration: batched, a quiet machine fits it in a batch or two.
    unbatched = {"DASK_DISTKM__ITERATION_BATCH_SECONDS": "0"}
    first = subprocess.Popen([DISTKM, *map(str, args), "--quiet", "--out", run], start_new_session=True,
                             env={**os.environ, "TMPDIR": str(machines[0]), **unbatched},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, iteration = time.monotonic() + 120, 0
    while iteration < 3:
        assert first.poll() is None, "the fit ended before its third checkpoint"
        assert time.monotonic() < deadline, "no third checkpoint in 120 s"
        if objects(s3, "runs/killed.partial/checkpoint/checkpoint.json"):
            body = s3.client().get_object(Bucket=s3.bucket, Key="runs/killed.partial/checkpoint/checkpoint.json")
            iteration = json.loads(body["Body"].read())["iteration"]
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # the command and its workers, between two iterations
    first.wait()
    assert not objects(s3, "runs/killed/") and objects(s3, "runs/killed.partial/checkpoint/")
    on_machine_2 = {"TMPDIR": str(machines[1])}
    refused = distkm(*args, "--quiet", "--out", run, env=on_machine_2)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"{run}.partial holds an interrupted fit" in refused.stderr
    resumed = distkm(*args, "--resume", "--out", run, env=on_machine_2, check=True)
    said = f"Resuming from {run}.partial/checkpoint: initialization 1, iteration "
    at = int(resumed.stdout.split(said)[1].split()[0])
    distkm(*args, "--quiet", "--out", whole, check=True)
    model, reference = (json.loads(s3.client().get_object(Bucket=s3.bucket, Key=f"runs/{name}/model.json")["Body"]
                                   .read()) for name in ("killed", "unkilled"))
    assert 3 <= at < model["n_iter"]  # killed midway, not after the end
    np.testing.assert_array_equal(zarr.open_array(f"{run}/centroids.zarr", mode="r")[:],
                                  zarr.open_array(f"{whole}/centroids.zarr", mode="r")[:])
    np.testing.assert_array_equal(zarr.open_array(f"{run}/labels.zarr", mode="r")[:],
                                  zarr.open_array(f"{whole}/labels.zarr", mode="r")[:])
    assert model["inertia"] == reference["inertia"] and model["n_iter"] == reference["n_iter"]
    assert not [key for key in objects(s3, "runs/") if "partial" in key or "publishing" in key]
    assert [[p.name for p in folder.iterdir() if "distkm" in p.name] for folder in machines] == [[], []]
    assert bucket_md5(s3, "mnist.zarr/") == store_before  # the input, object for object


def copy_objects(s3, keys, source, target):
    """Copy objects on the server from the prefix ``source`` to ``target`` (what a move does, step by step)."""
    for key in keys:
        s3.client().copy_object(Bucket=s3.bucket, Key=target + key[len(source):],
                                CopySource={"Bucket": s3.bucket, "Key": key})


def delete_objects(s3, keys):
    for key in keys:
        s3.client().delete_object(Bucket=s3.bucket, Key=key)


@pytest.mark.parametrize("kill_point", ["after the first object", "midway", "before the markers",
                                        "while removing the source", "while removing the old output"])
def test_a_move_into_place_killed_at_any_point_is_finished_by_the_next_command(s3, s3_mnist, kill_point):
    """The bucket as a kill at each point of the move leaves it (the built run in OUT.partial, part of it
    copied, the journal at that step): the same fit run again finishes the move to the complete run,
    without --overwrite (and says it is there now) or with it (then replaced by the new fit)."""
    name = "move-" + kill_point.replace(" ", "-")
    built, run = f"runs/{name}.partial", f"runs/{name}"
    args = ["fit", s3_mnist, "--split", "test", "--k", 3, "--seed", 0, "--max-iter", 3, "--no-pictures",
            "--out", f"s3://{s3.bucket}/{run}", "--quiet"]
    distkm(*args[:-3], "--seed", 7, "--quiet", "--out", f"s3://{s3.bucket}/runs/{name}-old", check=True)
    distkm(*args[:-2], f"s3://{s3.bucket}/runs/{name}-built", check=True)
    copy_objects(s3, objects(s3, f"runs/{name}-built/"), f"runs/{name}-built", built)
    expected = {key[len(built):]: md5 for key, md5 in bucket_md5(s3, built + "/").items()}
    keys = objects(s3, built + "/")
    data = [key for key in keys if key.rsplit("/", 1)[-1] not in ("zarr.json", "model.json")]
    step, copied = "copying", {"after the first object": data[:1], "midway": data[: len(data) // 2],
                               "before the markers": data}.get(kill_point, [])
    copy_objects(s3, copied, built, run)
    if kill_point == "while removing the source":
        copy_objects(s3, keys, built, run)
        delete_objects(s3, keys[::2])
        step = "removing"
    if kill_point == "while removing the old output":
        old = objects(s3, f"runs/{name}-old/")
        copy_objects(s3, old[1::2], f"runs/{name}-old", run)
        step = "replacing"
    journal = json.dumps({"source": f"{name}.partial", "step": step}).encode()
    s3.client().put_object(Bucket=s3.bucket, Key=f"runs/.{name}.publishing", Body=journal)

    again = distkm(*args)
    assert again.returncode == 1 and "was complete but for its move into place, which is finished now" in \
        again.stderr, again.stderr
    assert f"finishing the interrupted move of s3://{s3.bucket}/{built} into s3://{s3.bucket}/{run}" in again.stderr
    assert {key[len(run):]: md5 for key, md5 in bucket_md5(s3, run + "/").items()} == expected
    assert not objects(s3, built) and not objects(s3, f"runs/.{name}.publishing")
    assert distkm(*args, "--overwrite").returncode == 0  # and --overwrite replaces it with the new fit
    assert json.loads(s3.client().get_object(Bucket=s3.bucket, Key=f"{run}/model.json")["Body"].read())[
        "n_clusters"] == 3


def test_a_fit_killed_while_its_run_is_moved_into_place_is_finished_by_the_same_command(s3, s3_mnist):
    """A real kill, as soon as the move's journal appears: the same command run again leaves the complete
    run (the centroids of an uninterrupted fit), and no prefix or journal beside it."""
    run, whole = f"s3://{s3.bucket}/runs/moved", f"s3://{s3.bucket}/runs/unmoved"
    args = ["fit", s3_mnist, "--split", "test", "--k", 5, "--seed", 0, "--max-iter", 5, "--quiet"]
    store_before = bucket_md5(s3, "mnist.zarr/")
    first = subprocess.Popen([DISTKM, *map(str, args), "--out", run], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not objects(s3, "runs/.moved.publishing") and first.poll() is None:
        assert time.monotonic() < deadline, "no move into place in 120 s"
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    again = distkm(*args, "--out", run)
    assert again.returncode in (0, 1), again.stderr  # 1: the move was finished and the run is there now
    distkm(*args, "--out", whole, check=True)
    np.testing.assert_array_equal(zarr.open_array(f"{run}/centroids.zarr", mode="r")[:],
                                  zarr.open_array(f"{whole}/centroids.zarr", mode="r")[:])
    assert {key.split("/")[2] for key in objects(s3, "runs/moved/")} == \
        {key.split("/")[2] for key in objects(s3, "runs/unmoved/")}
    assert not [key for key in objects(s3, "runs/") if "moved.partial" in key or "moved.publishing" in key]
    assert bucket_md5(s3, "mnist.zarr/") == store_before


@pytest.mark.parametrize("case", ["missing bucket", "missing object", "wrong credentials", "unreachable endpoint",
                                  "no credentials", "credentials in the URL"])
def test_storage_failures_are_one_clear_line(s3, s3_mnist, tmp_path, case):
    url, env = s3_mnist, {}
    if case == "no credentials":  # none anywhere botocore looks (instance metadata is off for every S3 test)
        env = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
        expected = f"no credentials for '{s3_mnist}': none were found in AWS_ACCESS_KEY_ID"
    elif case == "credentials in the URL":
        url = s3_mnist.replace("s3://", f"s3://{s3.key}:{s3.secret}@")
        expected = f"'{s3_mnist}': credentials inside a s3:// URL are not used"
    elif case == "missing bucket":
        url, expected = "s3://no-such-bucket/mnist.zarr", "bucket 'no-such-bucket'"
    elif case == "missing object":
        url, expected = f"s3://{s3.bucket}/nothing.zarr", "no zarr store at"
    elif case == "wrong credentials":
        env, expected = {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "refused by the storage service"
    else:
        env, expected = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, "cannot reach the storage service"
    out = tmp_path / "run"
    result = distkm("fit", url, "--k", 3, "--out", out, env=env, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("distkm: error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    assert s3.secret not in result.stdout + result.stderr
    if case == "wrong credentials":
        assert "not-the-secret" not in result.stderr


def test_sweep_from_and_to_s3(s3, s3_mnist):
    out = f"s3://{s3.bucket}/sweep"
    result = distkm("sweep", s3_mnist, "--k", "2,3", "--max-iter", 5, "--seed", 0, "--out", out, "--quiet",
                    "--no-pictures")
    assert result.returncode == 0, result.stderr
    doc = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="sweep/sweep.json")["Body"].read())
    assert [row["k"] for row in doc["rows"]] == [2, 3] and doc["store"] == s3_mnist
    assert {"sweep/k=002/model.json", "sweep/k=003/model.json", "sweep/sweep.md"} <= set(objects(s3, "sweep/"))
    assert not [key for key in objects(s3) if key.startswith(".sweep")]


def test_input_checksums_unchanged(s3, s3_mnist, tmp_path):
    """Nothing above wrote into the input store (every object's checksum before and after a fit)."""
    def digest():
        keys = objects(s3, "mnist.zarr/")
        return {k: hashlib.md5(s3.client().get_object(Bucket=s3.bucket, Key=k)["Body"].read()).hexdigest()
                for k in keys}
    before = digest()
    result = distkm("fit", s3_mnist, "--split", "test", "--k", 3, "--max-iter", 2, "--out", tmp_path / "run",
                    "--quiet", "--no-evaluate")
    assert result.returncode == 0, result.stderr
    assert digest() == before


def test_outputs_on_s3_that_cannot_be_written_safely_are_refused(s3, s3_mnist, tmp_path):
    """A URL with glob characters (fsspec would match siblings), the bucket itself, and quantize (its
    output is images on a filesystem): one line each, nothing written."""
    before = objects(s3)
    for args, expected in [
        (["fit", s3_mnist, "--k", 2, "--out", f"s3://{s3.bucket}/runs/k[2]"], "without the characters"),
        (["fit", s3_mnist, "--k", 2, "--out", f"s3://{s3.bucket}"], "must name a path inside a bucket"),
        (["quantize", tmp_path, "--k", 2, "--out", f"s3://{s3.bucket}/q"], "writes its --out on a filesystem"),
    ]:
        result = distkm(*args, "--quiet")
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert objects(s3) == before
