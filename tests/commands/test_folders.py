"""Ingest of folders of PNG/JPEG images of any size."""

import numpy as np
import pytest
from PIL import Image

from distkm.apps.ingest import ingest_image_folder
from distkm.io.folders import load_image
from distkm.io.stores import open_store
from tests.helpers import DISTKM


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def labelled(tmp_path):
    root = tmp_path / "photos"
    wide = np.zeros((40, 80), np.uint8)
    wide[:, 20:60] = 255  # a white 40x40 square in a 40x80 black image
    for i in range(3):
        save(root / "cats" / f"{i}.png", wide)
        save(root / "dogs" / f"{i}.jpg", np.full((50, 30), 200, np.uint8))
    return root


def test_labels_from_folders_and_pad_fit(labelled, tmp_path):
    attrs = ingest_image_folder(labelled, tmp_path / "s.zarr", size=(28, 28), fit="pad", chunk_rows=4,
                                progress=False)
    store = open_store(tmp_path / "s.zarr")
    assert attrs["label_names"] == ["cats", "dogs"] and store.attrs["image_shape"] == [28, 28]
    assert store.labels.compute().tolist() == [0, 0, 0, 1, 1, 1]
    cat = store.images[0].compute().reshape(28, 28)
    # 40x80 padded to 28x28: 14 rows of image centred between 7 black rows above and below.
    assert cat[:6].max() == 0 and cat[-6:].max() == 0
    assert cat[14, 14] == 255 and cat[14, 0] == 0
    assert store.attrs["transforms"]["fit"] == "pad"


def test_crop_stretch_rgb_and_invert(labelled, tmp_path):
    path = labelled / "cats" / "0.png"
    # Lanczos looks a little past the crop box: allow its ringing on the border pixels.
    cropped = load_image(path, size=(28, 28), fit="crop")
    assert cropped[2:-2, 2:-2].min() == 255 and cropped.min() > 230  # the centre square fills the crop
    stretched = load_image(path, size=(10, 20), fit="stretch")
    assert stretched.shape == (10, 20) and stretched[:, 0].max() < 10 and stretched[:, 10].min() > 245
    assert load_image(path, size=(28, 28), fit="crop", invert=True)[2:-2, 2:-2].max() == 0
    save(labelled.parent / "red" / "r.png", np.stack([np.full((9, 9), 255, np.uint8),
                                                       np.zeros((9, 9), np.uint8), np.zeros((9, 9), np.uint8)], -1))
    ingest_image_folder(labelled.parent / "red", labelled.parent / "rgb.zarr", size=(4, 4), mode="RGB",
                        progress=False)
    store = open_store(labelled.parent / "rgb.zarr")
    assert store.attrs["image_shape"] == [4, 4, 3] and store.labels is None
    assert store.images.compute().reshape(4, 4, 3)[..., 0].min() == 255


def test_unreadable_image_is_named_and_nothing_written(labelled, tmp_path):
    (labelled / "dogs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        ingest_image_folder(labelled, tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ingest_image_folder(tmp_path / "empty", tmp_path / "s.zarr", progress=False)


def test_ingest_folder_command(labelled, tmp_path):
    import subprocess

    result = subprocess.run([DISTKM, "ingest", "folder", "--source", str(labelled), "--size", "16x12",
                             "--fit", "crop", "--out", str(tmp_path / "f.zarr"), "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "6 images as 16x12 rows (L, crop, 2 labelled classes)" in result.stdout
    assert open_store(tmp_path / "f.zarr").images.shape == (6, 192)
    missing = subprocess.run([DISTKM, "ingest", "folder", "--out", str(tmp_path / "g.zarr")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "needs --source DIR" in missing.stderr
