"""Images as users have them: 16-bit, with alpha, animated, and bombs that claim more pixels than they hold."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import distkm


def on_one_worker(*argv, env=None):
    """``distkm ARGV`` on one worker (the images here are small)."""
    return distkm(*argv, "--n-workers", "1", env=env, timeout=180)


def palette(out):
    doc = json.loads(out.with_name(out.stem + "-palette.json").read_text())
    return sorted(tuple(c["rgb"]) for c in doc["colours"])


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.repeat(np.linspace(0, 65535, 64).astype(np.uint16)[None, :], 32, axis=0)  # dark to light
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    result = on_one_worker("quantize", tmp_path / "deep.png", "--k", "2", "--out", tmp_path / "q.png", "--quiet")
    assert result.returncode == 0, result.stderr
    (dark, *_), (light, *_) = palette(tmp_path / "q.png")
    assert dark < 80 and light > 170, palette(tmp_path / "q.png")  # clipped, both were 255: all white


def test_what_is_dropped_is_said(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = np.arange(16)[:, None] * 16, 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "green", "blue")]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    for name, words in (("alpha.png", "its alpha channel (transparency) is dropped"),
                        ("moving.gif", "an animation of 3 frames; only the first is used")):
        result = on_one_worker("quantize", tmp_path / name, "--k", "2", "--out", tmp_path / f"q-{name}.png")
        assert result.returncode == 0 and words in result.stderr, result.stderr


def test_an_image_over_the_pixel_limit_is_refused_naming_the_file(tmp_path):
    Image.new("RGB", (100, 100), "white").save(tmp_path / "big.png")
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.new("L", (100, 100)).save(folder / "big.png")
    limit = {"DASK_DISTKM__MAX_IMAGE_PIXELS": "1000"}
    expected = "has 100x100 = 10,000 pixels, over the limit of 1,000 (distkm.max-image-pixels)"
    for argv, path in ((["quantize", tmp_path / "big.png", "--k", "2", "--out", tmp_path / "q.png"], "big.png"),
                       (["ingest", "folder", "--source", folder, "--out", tmp_path / "s.zarr", "--quiet"],
                        "folder/big.png")):
        result = on_one_worker(*argv, env=limit)
        assert result.returncode == 1 and expected in result.stderr and path in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "q.png").exists() and not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("size", [(30, 20)])
def test_images_within_the_limit_still_work(tmp_path, size):
    Image.new("RGB", size, "red").save(tmp_path / "ok.png")
    result = on_one_worker("quantize", tmp_path / "ok.png", "--k", "1", "--out", tmp_path / "q.png", "--quiet",
                    env={"DASK_DISTKM__MAX_IMAGE_PIXELS": str(size[0] * size[1])})
    assert result.returncode == 0, result.stderr
    assert palette(tmp_path / "q.png") == [(255, 0, 0)]
