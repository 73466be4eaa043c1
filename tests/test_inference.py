"""Predictor: sizes, dtypes, channels, stacks, batches, tiling, real BUSI images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mtunet.checkpoint import save_checkpoint
from napari_mtunet.config import ModelConfig, Preprocessing
from napari_mtunet.inference import Predictor, _positions, _ramp_weight
from napari_mtunet.model import build_model
from napari_mtunet.preprocess import ImageFormatError
from napari_mtunet.sample_data import make_phantom


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(tiny_model, device="cpu", tile_size=128)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(n=6, size=96, seed=3)


def _check(pred, shape, n_classes=3):
    assert pred.mask.shape == shape and pred.mask.dtype == np.uint8
    assert set(np.unique(pred.mask)) <= {0, 1}
    assert pred.probability.shape == shape and pred.probability.dtype == np.float32
    assert 0.0 <= pred.probability.min() and pred.probability.max() <= 1.0
    assert pred.class_probabilities.shape == (n_classes,)
    assert abs(float(pred.class_probabilities.sum()) - 1.0) < 1e-5
    assert pred.class_name == pred.class_names[pred.class_index]


@pytest.mark.parametrize("mode", ["resize", "native", "tiled"])
@pytest.mark.parametrize("shape", [(97, 131), (33, 250), (200, 64)])
def test_odd_sizes_are_padded_and_cropped_back(predictor, mode, shape):
    img = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    _check(predictor.predict(img, mode=mode), shape)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a,  # uint8 grey
        lambda a: a.astype(np.uint16) * 257,  # uint16 full range
        lambda a: a.astype(np.float32) / 255,  # float in [0, 1]
        lambda a: a.astype(np.float64) * 10 - 3,  # float outside [0, 1]
        lambda a: np.repeat(a[..., None], 3, axis=-1),  # RGB
        lambda a: np.dstack([a, a, a, np.full_like(a, 255)]),  # RGBA
        lambda a: a[..., None],  # (H, W, 1)
    ],
    ids=["uint8", "uint16", "float01", "float-range", "rgb", "rgba", "hw1"],
)
def test_dtypes_and_channels_give_the_same_answer(predictor, phantom, make):
    base = phantom.images[0]
    ref = predictor.predict(base)
    pred = predictor.predict(make(base))
    _check(pred, base.shape)
    # every representation of the same picture maps to (almost) the same input
    assert np.abs(pred.probability - ref.probability).max() < 0.02
    np.testing.assert_allclose(pred.class_probabilities, ref.class_probabilities, atol=0.02)


def test_nan_and_bad_shapes_are_rejected(predictor):
    img = np.zeros((64, 64), np.float32)
    img[3, 4] = np.nan
    with pytest.raises(ImageFormatError, match="NaN"):
        predictor.predict(img)
    with pytest.raises(ImageFormatError, match="shape"):
        predictor.predict(np.zeros((2, 3, 64, 64, 2), np.uint8))


def test_stacks_give_one_prediction_per_slice(predictor, phantom):
    grey = phantom.images[:4]
    preds = predictor.predict(grey)
    assert isinstance(preds, list) and len(preds) == 4
    for i, p in enumerate(preds):
        single = predictor.predict(grey[i])
        np.testing.assert_allclose(p.probability, single.probability, atol=1e-5)
        np.testing.assert_allclose(p.class_probabilities, single.class_probabilities, atol=1e-5)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    assert len(predictor.predict(rgb)) == 4
    # (3, H, W) is a 3-slice stack; rgb=True would read (H, W, 3) instead
    assert len(predictor.predict(grey[:3])) == 3


def test_predict_many_batches_match_single(predictor, phantom):
    imgs = [phantom.images[i] for i in range(5)] + [phantom.images[0][:70, :90]]
    many = predictor.predict_many(imgs)
    assert len(many) == 6
    for img, p in zip(imgs, many):
        s = predictor.predict(img)
        np.testing.assert_allclose(p.probability, s.probability, atol=1e-5)
        assert p.mask.shape == img.shape


def test_tiled_matches_untiled_away_from_seams():
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None), Preprocessing(image_size=64, resize=False)).eval()
    p = Predictor(model, device="cpu", tile_size=128, tile_overlap=0.25)
    img = make_phantom(n=1, size=320, seed=5).images[0]
    whole = p.predict(img, mode="native")
    tiled = p.predict(img, mode="tiled")
    assert tiled.mode == "tiled" and tiled.mask.shape == img.shape
    inner = (slice(48, -48), slice(48, -48))
    diff = np.abs(whole.probability[inner] - tiled.probability[inner])
    assert diff.mean() < 0.01
    assert np.mean(whole.mask[inner] == tiled.mask[inner]) > 0.98
    # class = area-weighted mean of tile probabilities
    assert abs(float(tiled.class_probabilities.sum()) - 1) < 1e-5


def test_tiling_helpers():
    assert _positions(100, 128, 96) == [0]
    pos = _positions(1000, 128, 96)
    assert pos[0] == 0 and pos[-1] == 1000 - 128 and all(b - a <= 96 for a, b in zip(pos, pos[1:]))
    w = _ramp_weight(64, 64, 16, 16)
    assert w.max() == 1 and w.min() > 0 and np.allclose(w, w.T)


def test_auto_mode_choice(tmp_path, tiny_model):
    p = Predictor(tiny_model, device="cpu", tile_size=128, max_resize_side=500)
    assert p.choose_mode(400, 300) == "resize"
    assert p.choose_mode(600, 100) == "tiled"  # too big to resize, larger than one tile
    model = build_model(ModelConfig(encoder_weights=None), Preprocessing(image_size=64, resize=False))
    q = Predictor(model, device="cpu", tile_size=128)
    assert q.choose_mode(100, 120) == "native"
    assert q.choose_mode(1000, 120) == "tiled"


def test_from_checkpoint_file_and_single_task_models(tmp_path):
    for task in ("seg", "cls"):
        m = build_model(ModelConfig(encoder_weights=None, task=task), Preprocessing(image_size=64))
        path = save_checkpoint(tmp_path / f"{task}.safetensors", m)
        p = Predictor(path, device="cpu")
        pred = p.predict(np.zeros((50, 70), np.uint8))
        if task == "seg":
            assert pred.mask.shape == (50, 70) and pred.class_name is None
        else:
            assert pred.mask is None and pred.class_probabilities.shape == (3,)
        assert pred.model_name == f"{task}.safetensors" and pred.model_hash == p.info.content_hash


def test_predict_on_real_busi_images(busi_root, tiny_model):
    from skimage.io import imread

    files = sorted((busi_root / "malignant").glob("malignant (*).png"))[:2]
    files += sorted((busi_root / "normal").glob("normal (*).png"))[:1]
    p = Predictor(tiny_model, device="cpu")
    for f in files:
        img = imread(f)
        pred = p.predict(img)
        _check(pred, img.shape[:2])
        assert pred.class_names == ["benign", "malignant", "normal"] and pred.class_probabilities.shape == (3,)
