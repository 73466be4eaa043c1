"""Non-finite numbers never become confident answers.

Checkpoints with NaN/inf weights are refused at load
(test_checkpoint_limits.py); here an *in-memory* model whose
weights went NaN (as after a diverged training step) is given to the
Predictor and to evaluation: the Predictor raises
:class:`~napari_mtunet.inference.NonFiniteOutputError` in every mode instead
of reporting class 0 with NaN probabilities and an empty mask, evaluation
refuses instead of printing plausible metrics, and the classification
metrics refuse NaN probabilities given to them directly.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_mtunet.inference import NonFiniteOutputError, Predictor


@pytest.fixture(scope="module")
def nan_model(tiny_model):
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.state_dict()["decoder.blocks.0.conv1.0.weight"].view(-1)[0] = float("nan")
        model.state_dict()["classification_head.3.weight"].view(-1)[0] = float("inf")
    return model.eval()


@pytest.mark.parametrize("mode", ["resize", "native", "tiled"])
def test_predictor_never_reports_a_class_or_mask_from_non_finite_outputs(nan_model, mode):
    pred = Predictor(nan_model, device="cpu", tile_size=64)
    img = np.random.default_rng(0).integers(0, 255, (90, 120), dtype=np.uint8)
    with pytest.raises(NonFiniteOutputError, match="NaN/infinite .* no class or mask is reported"):
        pred.predict(img, mode=mode)
    with pytest.raises(NonFiniteOutputError):
        pred.predict_many([img, img], mode=mode)
    assert issubclass(NonFiniteOutputError, ValueError)  # callers that report ValueErrors per file keep working


def test_evaluation_refuses_non_finite_outputs(nan_model):
    from napari_mtunet.training import evaluate_model
    from array_data import blobs_dataset

    with pytest.raises(NonFiniteOutputError, match="evaluation refused"):
        evaluate_model(nan_model, blobs_dataset(n=4, size=64, seed=0), device="cpu", n_boot=10)


def test_classification_metrics_refuse_nan_probabilities():
    from napari_mtunet.training.metrics import classification_metrics

    probs = np.array([[0.7, 0.3], [np.nan, np.nan], [0.2, 0.8]])
    with pytest.raises(ValueError, match="1 of 3 probability rows hold NaN/inf"):
        classification_metrics([0, 1, 1], probs, ["a", "b"], n_boot=10)


def test_finite_models_still_predict_and_evaluate(tiny_model):
    from napari_mtunet.training import evaluate_model
    from array_data import blobs_dataset

    p = Predictor(tiny_model, device="cpu").predict(np.zeros((40, 50), np.uint8))
    assert p.class_name in tiny_model.config.class_names and np.isfinite(p.class_probabilities).all()
    report = evaluate_model(tiny_model, blobs_dataset(n=4, size=64, seed=0), device="cpu", n_boot=10)
    assert report.segmentation is not None
