"""A checkpoint is never trusted: every file it names is checked (bare name, SHA-256, shape, finite)."""

import json

import numpy as np
import pytest

from distkm import KMeans
from distkm.cli import main
from distkm.io.stores import write_store


@pytest.fixture
def checkpointed(tmp_path):
    """Data and the checkpoint folder a finished fit of k=4 left (the resumed fit reads it again)."""
    x = np.random.RandomState(0).randint(0, 256, size=(400, 12)).astype(np.uint8)
    folder = tmp_path / "ckpt"
    params = dict(n_clusters=4, random_state=0, max_iter=5, checkpoint=folder)
    reference = KMeans(**params).fit(x)
    return x, params, folder, reference


def centers_file(folder):
    return folder / json.loads((folder / "checkpoint.json").read_text())["centers"]["file"]


def test_an_intact_checkpoint_resumes_to_the_same_result(checkpointed):
    x, params, folder, reference = checkpointed
    again = KMeans(**params).fit(x)
    assert again.cluster_centers_.tobytes() == reference.cluster_centers_.tobytes()
    assert again.inertia_ == reference.inertia_


@pytest.mark.parametrize("damage, message", [
    (lambda a: np.zeros((12, a.shape[1])), r"holds float64 \(12, 12\), expected finite float64 \(4, 12\)"),
    (lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a), "expected finite float64"),
    (lambda a: a + 1, None),  # same shape, other values: only the checksum can tell
])
def test_a_replaced_centers_file_is_refused(checkpointed, damage, message):
    x, params, folder, _ = checkpointed
    path = centers_file(folder)
    np.save(path, damage(np.load(path)))
    if message is not None:  # a file that matches its checksum again but is still wrong is refused too
        doc = json.loads((folder / "checkpoint.json").read_text())
        import hashlib

        doc["centers"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        (folder / "checkpoint.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=f"checkpoint file {path} is damaged") as error:
        KMeans(**params).fit(x)
    if message is None:
        assert "checksum differs" in str(error.value)
    else:
        assert error.match(message)


def test_a_truncated_centers_file_is_refused(checkpointed):
    x, params, folder, _ = checkpointed
    path = centers_file(folder)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match=f"checkpoint file {path} is damaged"):
        KMeans(**params).fit(x)


@pytest.mark.parametrize("name", ["/etc/passwd", "../centers-0123456789ab.npy", "centers.npy"])
def test_a_reference_outside_the_folder_is_refused(checkpointed, name):
    x, params, folder, _ = checkpointed
    doc = json.loads((folder / "checkpoint.json").read_text())
    doc["centers"]["file"] = name
    (folder / "checkpoint.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not a centers file of this folder"):
        KMeans(**params).fit(x)


def test_the_cli_says_it_in_one_line(tmp_path, capsys):
    x = np.random.RandomState(1).randint(0, 256, size=(300, 16)).astype(np.uint8)
    store = tmp_path / "s.zarr"
    write_store(store, x, None, {}, chunk_rows=100)
    fit = ["fit", str(store), "--k", "3", "--seed", "0", "--out", str(tmp_path / "run"), "--quiet",
           "--no-evaluate", "--no-pictures", "--n-workers", "1"]
    # A fit interrupted after its loop: its checkpoint stays in OUT.partial (the run is not published).
    from distkm.apps.fit import FitJob

    job = FitJob(store, tmp_path / "run", params={"n_clusters": 3, "random_state": 0})
    with pytest.raises(RuntimeError, match="stopped"), job.working():
        job.model.fit(job.x)
        raise RuntimeError("stopped after the fit, before the run was published")
    assert job.kept
    folder = job.work / "checkpoint"
    np.save(centers_file(folder), np.full((3, 16), np.nan))
    assert main(fit + ["--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged" in err and "centers-" in err, err
