"""No output over an input, and --overwrite replaces only what distkm wrote: the data-loss probes.

Every probe records the md5 of every file it could damage before the command
and checks them after: a refused command must leave them byte for byte.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from distkm.cli import main
from distkm.io.stores import write_store

CLUSTER = ["--n-workers", "1", "--quiet"]


def tree_md5(*paths):
    """md5 of every file under ``paths`` (a missing path is recorded as missing)."""
    digests = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        if not root.exists():
            digests[str(root)] = None
        for f in files:
            digests[str(f)] = hashlib.md5(f.read_bytes()).hexdigest()
    return digests


@pytest.fixture
def victim(tmp_path):
    """A small labelled store, with an unrelated file beside it."""
    rs = np.random.RandomState(0)
    x = rs.randint(0, 256, size=(600, 16), dtype=np.uint8)
    y = rs.randint(0, 3, size=600).astype(np.uint8)
    path = tmp_path / "data" / "victim.zarr"
    write_store(path, x, y, {"image_shape": [4, 4], "splits": {"train": [0, 500], "test": [500, 600]}},
                chunk_rows=200)
    (tmp_path / "data" / "notes.txt").write_text("the user's own notes\n")
    return path


def refused(argv, capsys, *expected):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    assert err.startswith("distkm: error: ") and err.count("\n") == 1, err
    for words in expected:
        assert words in err, err
    return err


def test_fit_output_over_its_input_store_is_refused(victim, capsys):
    before = tree_md5(victim.parent)
    refused(["fit", str(victim), "--k", "3", "--out", str(victim), "--overwrite", *CLUSTER], capsys,
            "is the input", str(victim))
    assert tree_md5(victim.parent) == before


def test_fit_output_holding_its_input_is_refused(victim, capsys):
    before = tree_md5(victim.parent)
    refused(["fit", str(victim), "--k", "3", "--out", str(victim.parent), "--overwrite", *CLUSTER], capsys,
            "contains the input")
    assert tree_md5(victim.parent) == before


def test_fit_output_inside_its_input_is_refused(victim, capsys):
    before = tree_md5(victim.parent)
    refused(["fit", str(victim), "--k", "3", "--out", str(victim / "run"), *CLUSTER], capsys, "lies inside the input")
    assert tree_md5(victim.parent) == before
    assert not (victim / "run").exists() and not (victim / "run.partial").exists()


def test_fit_output_through_a_link_to_its_input_is_refused(victim, tmp_path, capsys):
    link = tmp_path / "link.zarr"
    link.symlink_to(victim)
    before = tree_md5(victim.parent)
    refused(["fit", str(victim), "--k", "3", "--out", str(link), "--overwrite", *CLUSTER], capsys, "is the input")
    assert tree_md5(victim.parent) == before and link.is_symlink()


def test_overwrite_never_replaces_a_file_distkm_did_not_write(victim, tmp_path, capsys):
    other = tmp_path / "afile.txt"
    other.write_text("keep me\n")
    folder = tmp_path / "someone-elses"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\begin{document}\n")
    before = tree_md5(other, folder, victim)
    for out in (other, folder):
        refused(["fit", str(victim), "--k", "3", "--out", str(out), "--overwrite", *CLUSTER], capsys,
                "is not an output of distkm")
    assert tree_md5(other, folder, victim) == before


def test_augment_output_over_its_source_is_refused(victim, capsys):
    before = tree_md5(victim.parent)
    refused(["augment", str(victim), "--n", "800", "--out", str(victim), "--overwrite", *CLUSTER], capsys,
            "is the input")
    refused(["augment", str(victim), "--n", "800", "--out", str(victim / "aug.zarr"), *CLUSTER], capsys,
            "lies inside the input")
    assert tree_md5(victim.parent) == before


def test_predict_output_over_the_run_or_the_store_is_refused(victim, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", str(victim), "--k", "3", "--out", str(run), "--seed", "0", "--no-evaluate", "--no-pictures",
                 *CLUSTER]) == 0
    capsys.readouterr()
    before = tree_md5(run, victim)
    refused(["predict", str(run), str(victim), "--out", str(run), "--overwrite", *CLUSTER], capsys, "is the input")
    refused(["predict", str(run), str(victim), "--out", str(victim / "labels"), "--overwrite", *CLUSTER], capsys,
            "lies inside the input")
    assert tree_md5(run, victim) == before


def test_overwrite_replaces_distkm_outputs(victim, tmp_path, capsys):
    """What distkm wrote is replaced with --overwrite: a run folder, a labels array, an ingested store."""
    run, labels = tmp_path / "run", tmp_path / "labels.zarr"
    fit = ["fit", str(victim), "--k", "3", "--out", str(run), "--no-evaluate", "--no-pictures", *CLUSTER]
    assert main(fit + ["--seed", "0"]) == 0
    (run / "stale.txt").write_text("from the first run\n")
    assert main(fit + ["--seed", "1", "--overwrite"]) == 0
    assert not (run / "stale.txt").exists() and (run / "model.json").exists()
    predict = ["predict", str(run), str(victim), "--out", str(labels), *CLUSTER]
    assert main(predict) == 0
    assert main(predict + ["--overwrite"]) == 0
    capsys.readouterr()


def test_quantize_output_over_its_source_image_is_refused(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    before = tree_md5(tmp_path)
    refused(["quantize", str(image), "--k", "2", "--out", str(image), "--overwrite", *CLUSTER], capsys,
            "is the input")
    assert tree_md5(tmp_path) == before
    # Its own earlier output is replaced.
    out = tmp_path / "photo-2.png"
    assert main(["quantize", str(image), "--k", "2", "--out", str(out), *CLUSTER]) == 0
    assert main(["quantize", str(image), "--k", "3", "--out", str(out), "--overwrite", *CLUSTER]) == 0
    capsys.readouterr()
    assert len(np.unique(np.asarray(Image.open(out)).reshape(-1, 3), axis=0)) == 3
