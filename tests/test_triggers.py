import numpy as np
import pytest
import torch

from backdoorlearn import Trigger
from backdoorlearn.triggers import stamp


def test_patch_stamps_bottom_right_and_leaves_input(rng):
    X = rng.random((5, 1, 8, 8), dtype=np.float32)
    X0 = X.copy()
    t = Trigger.patch((1, 8, 8), size=2, color=1.0)
    Xt = t.apply(X)
    assert np.array_equal(X, X0)
    assert np.all(Xt[:, :, -2:, -2:] == 1.0)
    assert np.array_equal(Xt[:, :, :6, :], X[:, :, :6, :])
    assert t.l1_norm == 4.0


def test_apply_accepts_grayscale_without_channel_axis(rng):
    X = rng.random((3, 8, 8), dtype=np.float32)
    t = Trigger.patch((8, 8), size=3, location="top-left", color=0.5)
    Xt = t.apply(X)
    assert Xt.shape == (3, 8, 8)
    assert np.all(Xt[:, :3, :3] == 0.5)


def test_colour_patch_and_location_tuple():
    t = Trigger.patch((3, 10, 10), size=2, location=(4, 5), color=(1.0, 0.0, 0.5))
    Xt = t.apply(np.zeros((1, 3, 10, 10), np.float32))
    assert np.allclose(Xt[0, :, 4, 5], [1.0, 0.0, 0.5])
    assert Xt[0, :, 3, 5].sum() == 0


def test_custom_binary_patch_is_a_checkerboard():
    checker = np.indices((3, 3)).sum(0) % 2
    t = Trigger.patch((1, 8, 8), patch=checker, color=1.0)
    assert t.l1_norm == checker.sum()


def test_blend_is_a_convex_mix(rng):
    pattern = rng.random((3, 4, 4), dtype=np.float32)
    X = rng.random((2, 3, 4, 4), dtype=np.float32)
    t = Trigger.blend(pattern, alpha=0.25)
    assert np.allclose(t.apply(X), 0.75 * X + 0.25 * pattern)


def test_from_image_glyph_mask():
    glyph = np.zeros((3, 3), np.float32)
    glyph[1, :] = 1.0
    t = Trigger.from_image(glyph, image_shape=(1, 8, 8), location=(2, 2), color=1.0)
    assert t.l1_norm == 3.0
    Xt = t.apply(np.zeros((1, 1, 8, 8), np.float32))
    assert np.array_equal(np.flatnonzero(Xt[0, 0].ravel()), [26, 27, 28])


def test_stamp_is_shared_by_numpy_and_torch(rng):
    X = rng.random((2, 1, 4, 4), dtype=np.float32)
    m = rng.random((1, 4, 4), dtype=np.float32)
    p = rng.random((1, 4, 4), dtype=np.float32)
    out_np = stamp(X, m, p)
    out_t = stamp(torch.from_numpy(X), torch.from_numpy(m), torch.from_numpy(p))
    assert np.allclose(out_np, out_t.numpy())


def test_save_load_roundtrip_and_equality(tmp_path):
    t = Trigger.patch((3, 8, 8), size=2, color=(0.2, 0.4, 0.6), name="sticker")
    path = tmp_path / "trigger.npz"
    t.save(path)
    back = Trigger.load(path)
    assert back == t and back.name == "sticker"
    assert back != Trigger.patch((3, 8, 8), size=3)


def test_load_rejects_other_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        Trigger.load(path)


@pytest.mark.parametrize(
    "mask, pattern, match",
    [
        (np.ones((4, 4)), np.ones((5, 5)), "same height and width"),
        (np.full((4, 4), 1.5), np.ones((4, 4)), r"\[0, 1\]"),
        (np.ones((2, 4, 4)), np.ones((3, 4, 4)), "channels"),
        (np.ones(4), np.ones(4), "shape"),
        (np.full((4, 4), np.nan), np.ones((4, 4)), "NaN"),
    ],
)
def test_bad_mask_or_pattern(mask, pattern, match):
    with pytest.raises(ValueError, match=match):
        Trigger(mask, pattern)


def test_apply_rejects_mismatched_images():
    t = Trigger.patch((3, 8, 8), size=2)
    with pytest.raises(ValueError, match="size"):
        t.apply(np.zeros((1, 3, 9, 9), np.float32))
    with pytest.raises(ValueError, match="channel"):
        t.apply(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        t.apply(np.full((1, 3, 8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="at least 1 sample"):
        t.apply(np.zeros((0, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="outside"):
        Trigger.patch((1, 8, 8), size=3, location=(7, 7))
