"""No output over an input, and --overwrite replaces only what distkm wrote: the data-loss probes.

Every probe records the md5 of every file it could damage before the command
and checks them after: a refused command must leave them byte for byte.
"""

import json

import numpy as np
import pytest
import zarr

from distkm.cli import main
from distkm.io.stores import write_store
from tests.helpers import tree_md5

CLUSTER = ["--n-workers", "1", "--quiet"]


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


@pytest.fixture
def victim_run(victim, tmp_path, capsys):
    """A run folder fitted on the victim store (k=3, no evaluation, no pictures)."""
    run = tmp_path / "run"
    assert main(["fit", str(victim), "--k", "3", "--out", str(run), "--seed", "0", "--no-evaluate", "--no-pictures",
                 *CLUSTER]) == 0
    capsys.readouterr()
    return run


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


def test_predict_output_over_the_run_or_the_store_is_refused(victim, victim_run, capsys):
    run = victim_run
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


# --------------------------------------------------------------------------- #
# The same place under another name (file://, local://, protocol aliases, links)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("a, b", [
    ("s3://bucket/data.zarr", "s3a://bucket/data.zarr"),
    ("s3://bucket/data.zarr", "S3A://bucket//./data.zarr/"),
    ("s3://KEY:SECRET@bucket/data.zarr", "s3://bucket/data.zarr"),
    ("gs://bucket/data.zarr", "gcs://bucket/data.zarr"),
    ("abfs://container/data.zarr", "az://container/data.zarr"),
    ("memory://data.zarr", "memory:///data.zarr"),
])
def test_protocol_aliases_name_the_same_place(a, b):
    from distkm.io.locations import canonical

    assert canonical(a) == canonical(b)
    assert canonical(a) in canonical(b + "/run").parents
    assert canonical(a) != canonical(a.replace("data.zarr", "other.zarr"))


def test_local_spellings_name_the_same_place(tmp_path, monkeypatch):
    from distkm.io.locations import canonical, local_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.zarr").mkdir()
    (tmp_path / "link.zarr").symlink_to(tmp_path / "data.zarr")
    spellings = [str(tmp_path / "data.zarr"), "data.zarr", "./data.zarr/", f"file://{tmp_path}/data.zarr",
                 f"FILE://{tmp_path}/data.zarr", f"local://{tmp_path}/data.zarr", f"file:{tmp_path}/data.zarr",
                 "file://data.zarr", str(tmp_path / "link.zarr"), f"file://{tmp_path}/link.zarr"]
    assert {canonical(s) for s in spellings} == {canonical(tmp_path / "data.zarr")}
    assert canonical("s3://data.zarr") != canonical("data.zarr")  # a bucket is not a local folder
    assert local_path(f"file://{tmp_path}/run") == tmp_path / "run"


@pytest.mark.parametrize("spell_input, spell_output", [
    (lambda p: f"file://{p}", str),
    (str, lambda p: f"file://{p}"),
    (lambda p: f"local://{p}", lambda p: f"file:{p}"),
])
def test_fit_output_over_its_input_under_another_name_is_refused(victim, capsys, spell_input, spell_output):
    before = tree_md5(victim.parent)
    refused(["fit", spell_input(victim), "--k", "3", "--out", spell_output(victim), "--overwrite", *CLUSTER],
            capsys, "is the input")
    refused(["fit", spell_input(victim), "--k", "3", "--out", spell_output(victim / "run"), *CLUSTER],
            capsys, "lies inside the input")
    assert tree_md5(victim.parent) == before


def test_predict_and_evaluate_under_another_name_leave_the_run_whole(victim, victim_run, capsys):
    run = victim_run
    before = tree_md5(run, victim)
    refused(["predict", f"file://{run}", str(victim), "--out", f"local://{run}", "--overwrite", *CLUSTER], capsys,
            "is the input")
    refused(["predict", str(run), f"file://{victim}", "--out", f"file://{victim}", "--overwrite", *CLUSTER], capsys,
            "is the input")
    assert tree_md5(run, victim) == before
    # evaluate replaces the run's pictures: a store kept there (under any name) would go with them
    kept = run / "pictures" / "kept.zarr"
    write_store(kept, np.zeros((30, 16), np.uint8), np.zeros(30, np.uint8), {"image_shape": [4, 4], "splits": {}},
                chunk_rows=10)
    before = tree_md5(run)
    refused(["evaluate", str(run), "--data", f"file://{kept}", *CLUSTER], capsys, "contains the input")
    assert tree_md5(run) == before


def test_file_url_outputs_land_where_they_say(victim, tmp_path, monkeypatch, capsys):
    """`--out file:///abs/run` writes /abs/run, never ./file:/abs/run (fit, predict, augment, sweep)."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "out"
    fit = ["fit", str(victim), "--k", "3", "--seed", "0", "--no-evaluate", "--no-pictures", *CLUSTER]
    assert main([*fit, "--out", f"file://{out}/run"]) == 0
    assert main(["predict", f"file://{out}/run", f"file://{victim}", "--out", f"file://{out}/labels.zarr",
                 *CLUSTER]) == 0
    assert main(["augment", f"file://{victim}", "--n", "700", "--out", f"file://{out}/aug.zarr", *CLUSTER]) == 0
    assert main(["sweep", f"file://{victim}", "--k", "2,3", "--out", f"file://{out}/sweep", "--no-pictures",
                 "--silhouette-sample", "0", *CLUSTER]) == 0
    printed = capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []
    assert json.loads((out / "run" / "model.json").read_text())["format"] == "distkm-model"
    assert zarr.open_array(out / "labels.zarr", mode="r").shape == (600,)
    assert zarr.open_group(out / "aug.zarr", mode="r")["images"].shape == (700, 16)
    assert (out / "sweep" / "sweep.json").is_file()
    assert "file:" not in printed and f"{out}/labels.zarr" in printed


def test_ingest_to_a_file_url_lands_where_it_says(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "stores" / "mnist.zarr"
    assert main(["ingest", "mnist", "--out", f"file://{out}", "--quiet"]) == 0
    assert zarr.open_group(out, mode="r")["images"].shape == (70000, 784)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stores"]
    assert f"wrote {out}" in capsys.readouterr().out
