"""Post-processing: small-lesion removal and test-time augmentation, the same in the Predictor and evaluation;
chosen on the validation split at the end of training and stored in the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mtunet.config import ModelConfig, Postprocessing, Preprocessing
from array_data import EchoNet
from napari_mtunet.postprocess import forward, remove_small_lesions


def _blobs(size=100):
    img = np.zeros((size, size), np.uint8)
    img[10:40, 10:40] = 255  # 900 px = 9% of the image
    img[70:73, 70:73] = 255  # 9 px = 0.09%
    return img


def test_remove_small_lesions_keeps_big_ones_only():
    m = _blobs() > 0
    out = remove_small_lesions(m, 0.005)
    assert out[20, 20] and not out[71, 71] and out.sum() == 900
    assert remove_small_lesions(m, 0.0).sum() == m.sum()
    stack = remove_small_lesions(np.stack([m, ~m]), 0.005)
    assert stack.shape == (2, 100, 100) and not stack[0, 71, 71]


def test_predictor_applies_the_checkpoint_postprocessing_in_whole_image_modes_only():
    from napari_mtunet.inference import Predictor

    p = Predictor(EchoNet().eval(), device="cpu", tile_size=64)
    img = _blobs(128)
    assert p.predict(img, mode="native").mask[71, 71] == 1  # default: nothing removed
    p.postprocessing = Postprocessing(min_lesion_fraction=0.005)
    native = p.predict(img, mode="native").mask
    assert native[20, 20] == 1 and native[71, 71] == 0
    tiled = p.predict(img, mode="tiled").mask  # a big image's tiles: sizes relative to the image mean nothing
    assert tiled[71, 71] == 1


def test_tta_flips_back_correctly():
    net = EchoNet().eval()
    x = torch.rand(2, 3, 64, 96)
    a, b = forward(net, x), forward(net, x, hflip_tta=True)
    torch.testing.assert_close(a.seg, b.seg)  # a flip-equivariant network: TTA changes nothing
    torch.testing.assert_close(a.cls, b.cls)


def test_evaluation_uses_the_same_postprocessing():
    from torch.utils.data import Dataset

    from napari_mtunet.training import predict_dataset

    img = _blobs(128)

    class One(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            x = torch.from_numpy(np.repeat(img[None], 3, 0)).float() / 255
            return {"image": x, "mask": torch.from_numpy(img[None] > 0).float(), "label": torch.tensor(0),
                    "has_mask": True, "has_label": True, "index": 0}

    raw = predict_dataset(EchoNet().eval(), One())
    cleaned = predict_dataset(EchoNet().eval(), One(), postprocessing=Postprocessing(min_lesion_fraction=0.005))
    assert raw.pred_masks[0, 71, 71] and not cleaned.pred_masks[0, 71, 71]


@pytest.mark.parametrize("bad", [-0.1, 0.6, float("nan")])
def test_postprocessing_config_is_validated(bad):
    from napari_mtunet.config import ConfigError

    with pytest.raises(ConfigError, match="min_lesion_fraction"):
        Postprocessing(min_lesion_fraction=bad)


def test_training_chooses_postprocessing_on_validation_and_stores_it(tmp_path):
    from napari_mtunet.checkpoint import load_checkpoint
    from napari_mtunet.config import AugmentConfig, DataConfig, RunConfig, TrainConfig
    from napari_mtunet.events import History, drive
    from napari_mtunet.sample_data import write_phantom_dataset
    from napari_mtunet.workflows import iter_train
    from napari_mtunet.workflows.calibrate import MIN_LESION_FRACTIONS

    root = write_phantom_dataset(tmp_path / "ph", n=24, size=64, seed=2)
    run = RunConfig(
        model=ModelConfig(encoder_weights=None, encoder_depth=3, decoder_channels=(16, 16, 16)),
        preprocessing=Preprocessing(image_size=64),
        data=DataConfig(root=str(root), val_fraction=0.25, test_fraction=0.2, augment=AugmentConfig(enabled=False)),
        train=TrainConfig(epochs=1, batch_size=4, device="cpu", amp=False, bn_recalibration_batches=0),
    )
    hist = History()
    outcome = drive(iter_train(run, tmp_path / "run", n_boot=10), [hist])
    assert any("post-processing chosen on" in e.text for e in hist.of("status"))
    _, info = load_checkpoint(outcome.best_checkpoint)  # the re-saved checkpoint is intact (hashes verified)
    assert info.postprocessing.min_lesion_fraction in MIN_LESION_FRACTIONS
    assert outcome.run.postprocessing == info.postprocessing


def test_consistent_class_probabilities_follow_the_mask():
    from napari_mtunet.postprocess import consistent_class_probabilities

    p = np.array([[0.2, 0.5, 0.3], [0.2, 0.5, 0.3], [0.0, 0.0, 1.0]], np.float32)
    out = consistent_class_probabilities(p, np.array([False, True, True]), 2)
    np.testing.assert_allclose(out[0], [0, 0, 1])  # no lesion: the no-lesion class
    np.testing.assert_allclose(out[1], [0.2 / 0.7, 0.5 / 0.7, 0], rtol=1e-6)  # a lesion: never that class
    np.testing.assert_allclose(out[2], [0.5, 0.5, 0])  # the classifier gave the others nothing: equal shares
    np.testing.assert_allclose(out.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(consistent_class_probabilities(p[0], False, 0), [1, 0, 0])  # one image
    assert p[0, 2] == np.float32(0.3)  # the input is not modified


class _Scans(torch.utils.data.Dataset):
    """Half the images hold a lesion (class 0), half are empty (class 1, "normal"), as in BUSI."""

    def __init__(self, n=8, lesion_in_both=False):
        self.n, self.lesion_in_both = n, lesion_in_both

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        label = i % 2
        img = _blobs(64) if (label == 0 or self.lesion_in_both) else np.zeros((64, 64), np.uint8)
        x = torch.from_numpy(np.repeat(img[None], 3, 0)).float() / 255
        return {"image": x, "mask": torch.from_numpy(img[None] > 0).float(), "label": torch.tensor(label),
                "has_mask": True, "has_label": True, "index": i}


def test_calibration_makes_the_heads_agree_only_when_it_helps_on_validation():
    from napari_mtunet.training import predict_dataset
    from napari_mtunet.workflows.calibrate import calibrate_postprocessing

    net = EchoNet().eval()  # its classifier always says class_0; its mask is the image
    cal = calibrate_postprocessing(net, _Scans(), "cpu")
    assert cal.chosen.no_lesion_class == "class_1"
    assert cal.no_lesion_trial == ("class_1", 0.5, 1.0) and "class 'class_1' exactly when no lesion" in cal.describe()
    preds = predict_dataset(net, _Scans(), postprocessing=cal.chosen)  # evaluation applies it
    assert (preds.probabilities.argmax(1) == preds.labels).all()
    # no class whose masks are all empty: nothing to agree on
    assert calibrate_postprocessing(net, _Scans(lesion_in_both=True), "cpu").chosen.no_lesion_class is None


def test_predictor_reports_the_agreed_class_in_whole_image_modes():
    from napari_mtunet.inference import Predictor

    p = Predictor(EchoNet().eval(), device="cpu", tile_size=64)
    p.postprocessing = Postprocessing(no_lesion_class="class_1")
    blank, lesion = p.predict(np.zeros((64, 64), np.uint8), mode="native"), p.predict(_blobs(64), mode="native")
    assert blank.class_name == "class_1" and blank.class_probabilities.tolist() == [0.0, 1.0] and not blank.mask.any()
    assert lesion.class_name == "class_0" and lesion.class_probabilities[1] == 0.0
    # tiled prediction of a large image leaves the classifier's own answer
    assert p.predict(np.zeros((128, 128), np.uint8), mode="tiled").class_name == "class_0"


def test_no_lesion_class_must_be_a_class_of_a_two_headed_model():
    from napari_mtunet.config import ConfigError, RunConfig

    model = ModelConfig(encoder_weights=None).with_classes(["benign", "malignant", "normal"])
    assert RunConfig(model=model, postprocessing=Postprocessing(no_lesion_class="normal"))
    with pytest.raises(ConfigError, match="not one of the model's classes"):
        RunConfig(model=model, postprocessing=Postprocessing(no_lesion_class="healthy"))
    with pytest.raises(ConfigError, match="needs both heads"):
        RunConfig(model=ModelConfig(encoder_weights=None, task="seg").with_classes(["a", "b"]),
                  postprocessing=Postprocessing(no_lesion_class="a"))
    with pytest.raises(ConfigError, match="no_lesion_class"):
        Postprocessing(no_lesion_class=" ")
