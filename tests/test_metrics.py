import json
import math

import numpy as np
import pytest

from napari_mtunet.training.metrics import (
    EvaluationReport,
    bootstrap_ci,
    classification_metrics,
    dice_iou_per_image,
    segmentation_metrics,
)


def _m(rows):
    return np.array(rows, dtype=bool)


def test_dice_iou_hand_computed():
    true = _m([[1, 1, 0, 0], [0, 0, 0, 0]])
    pred = _m([[1, 0, 0, 0], [0, 0, 0, 0]])
    # |P∩T| = 1, |P| = 1, |T| = 2 -> Dice = 2/3, IoU = 1/2
    d, i = dice_iou_per_image(pred, true)
    assert d[0] == pytest.approx(2 / 3)
    assert i[0] == pytest.approx(0.5)


def test_empty_mask_convention():
    z = np.zeros((4, 4), bool)
    one = z.copy()
    one[1, 1] = True
    pred = np.stack([z, z, one, one])
    true = np.stack([z, one, z, one])
    d, i = dice_iou_per_image(pred, true)
    # both empty = 1; pred empty vs true non-empty = 0; false positive on empty = 0; perfect = 1
    assert d.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert i.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_segmentation_metrics_lesion_and_global():
    z = np.zeros((2, 2), bool)
    a = _m([[1, 1], [0, 0]])
    b = _m([[1, 0], [0, 0]])
    full = np.ones((2, 2), bool)
    pred = np.stack([z, b, full])
    true = np.stack([z, a, a])
    m = segmentation_metrics(pred, true, n_boot=200)
    # per image: 1 (both empty), 2/3, 2*2/(4+2)=2/3
    assert m["dice"].value == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert m["dice"].n == 3
    assert m["dice_lesion"].value == pytest.approx(2 / 3)
    assert m["dice_lesion"].n == 2
    # IoU: 1, 1/2, 2/4
    assert m["iou"].value == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["iou_lesion"].value == pytest.approx(0.5)
    # pooled: inter = 0+1+2 = 3, |P|+|T| = 0+1+4 + 0+2+2 = 9 -> 6/9
    assert m["dice_global"].value == pytest.approx(6 / 9)
    for v in m.values():
        assert v.split == "test"
        assert v.ci_low <= v.value + 1e-9 and v.value <= v.ci_high + 1e-9


def test_classification_metrics_hand_computed():
    y = [0, 0, 1, 1, 2, 2]
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.1, 0.8, 0.1],  # wrong (pred 1)
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.1, 0.8],
            [0.1, 0.2, 0.7],
        ]
    )
    m = classification_metrics(y, probs, ["a", "b", "c"], split="val", n_boot=200)
    assert m["accuracy"].value == pytest.approx(5 / 6)
    assert m["balanced_accuracy"].value == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 2]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["recall"] == pytest.approx(0.5)
    # macro F1: a: P=1,R=.5 -> 2/3; b: P=2/3,R=1 -> 0.8; c: 1
    assert m["macro_f1"].value == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    assert 0.5 < m["auc_ovr"].value <= 1.0
    assert m["accuracy"].split == "val" and m["accuracy"].n == 6


def test_bootstrap_ci_constant_and_small():
    lo, hi = bootstrap_ci(10, lambda idx: 0.7, n_boot=100)
    assert lo == pytest.approx(0.7) and hi == pytest.approx(0.7)
    lo, hi = bootstrap_ci(1, lambda idx: 0.7)
    assert math.isnan(lo) and math.isnan(hi)


def test_empty_split_is_nan_not_crash():
    m = segmentation_metrics(np.zeros((0, 4, 4), bool), np.zeros((0, 4, 4), bool))
    assert m["dice"].n == 0 and math.isnan(m["dice"].value)
    assert "n/a" in m["dice"].format()


def test_vectorised_bootstrap_equals_the_loop_on_the_same_resamples():
    """Every batched statistic gives exactly the per-resample value of the scikit-learn loop."""
    from napari_mtunet.training import metrics as M

    rng = np.random.default_rng(3)
    for k, n in ((3, 60), (2, 40), (4, 25)):
        y = rng.integers(0, k, n)
        y[:k] = np.arange(k)
        logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
        prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        prob[5] = prob[6]  # ties in the scores
        pred = prob.argmax(1)
        batched = [lambda i: M.accuracy(y, pred, i), lambda i: M.balanced_accuracy(y, pred, i),
                   lambda i: M.macro_f1(y, pred, list(range(k)), i), M._batched_auc(y, prob, k)]
        idx = M.bootstrap_indices(n, 200, seed=1)
        from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loops = [
                lambda i: float((y[i] == pred[i]).mean()),
                lambda i: balanced_accuracy_score(y[i], pred[i]),
                lambda i: f1_score(y[i], pred[i], labels=list(range(k)), average="macro", zero_division=0),
            ]
            for f, b in zip(loops, batched[:3]):
                np.testing.assert_allclose(b(idx), [f(r) for r in idx], atol=1e-12)
            aucs = []
            for r in idx:
                t = y[r]
                present = np.unique(t)
                if len(present) < 2:
                    aucs.append(np.nan)
                elif k == 2:
                    aucs.append(roc_auc_score(t, prob[r, 1]))
                else:
                    aucs.append(np.mean([roc_auc_score(t == c, prob[r, c]) for c in present]))
            np.testing.assert_allclose(batched[3](idx), aucs, atol=1e-12)
    # segmentation: mean and pooled Dice
    inter, ps, ts = (rng.integers(0, 50, 30).astype(float) for _ in range(3))
    idx = M.bootstrap_indices(30, 100, seed=2)
    pooled = M.batched_pooled_dice(inter, ps, ts)(idx)
    expected = [1.0 if ps[r].sum() + ts[r].sum() == 0 else 2 * inter[r].sum() / (ps[r].sum() + ts[r].sum()) for r in idx]
    np.testing.assert_allclose(pooled, expected)


# --------------------------------------------------------------------------- a class absent from the split


def _absent_class_case(seed: int = 0, n0: int = 9, n1: int = 7, k: int = 3):
    rng = np.random.default_rng(seed)
    y = np.array([0] * n0 + [1] * n1)
    prob = rng.dirichlet(np.ones(k), size=len(y))
    prob[0] = [0.1, 0.1, 0.8] + [0.0] * (k - 3)  # at least one prediction into the absent class
    return y, prob / prob.sum(1, keepdims=True)


@pytest.mark.parametrize("k,missing", [(3, [2]), (4, [2, 3])])
def test_macro_averages_run_over_the_classes_present_and_name_the_absent(k, missing):
    import warnings

    from sklearn.metrics import balanced_accuracy_score, f1_score

    names = ["benign", "malignant", "normal", "other"][:k]
    y, prob = _absent_class_case(k=k)
    pred = prob.argmax(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = classification_metrics(y, prob, names, n_boot=300)
        text = EvaluationReport("test", len(y), c).format()
    assert caught == [], [str(w.message) for w in caught]  # no raw RuntimeWarning / UserWarning
    present = [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_f1 = f1_score(y, pred, labels=present, average="macro", zero_division=0)
        want_bacc = balanced_accuracy_score(y, pred)
    assert c["macro_f1"].value == pytest.approx(want_f1)
    assert c["balanced_accuracy"].value == pytest.approx(want_bacc)
    # the same classes in both averages: F1 is not dragged down by a 0 for a class with no images
    assert c["absent_classes"] == [names[i] for i in missing]
    assert c["averaged_over"] == ["benign", "malignant"]
    assert "no image of class" in text and all(names[i] in text for i in missing)
    assert "absent from this split" in text
    d = EvaluationReport("test", len(y), c).to_dict()
    assert d["classification"]["absent_classes"] == [names[i] for i in missing]


def test_every_class_present_reports_no_absent_note():
    rng = np.random.default_rng(1)
    y = np.array([0, 1, 2] * 6)
    prob = rng.dirichlet(np.ones(3), size=len(y))
    c = classification_metrics(y, prob, ["a", "b", "c"], n_boot=100)
    assert c["absent_classes"] == [] and c["averaged_over"] == ["a", "b", "c"]
    assert "no image of class" not in EvaluationReport("test", len(y), c).format()


def test_pooled_dice_and_balanced_accuracy_have_one_definition_each():
    """The fine-tune scores, validation and the bootstrap all call the same two functions."""
    import inspect

    from napari_mtunet.training import evaluate, validation
    from napari_mtunet.training import metrics as M
    from napari_mtunet.workflows import finetune

    assert validation.balanced_accuracy is M.balanced_accuracy
    assert evaluate.balanced_accuracy is M.balanced_accuracy and evaluate.pooled_dice is M.pooled_dice
    assert "score_images(" in inspect.getsource(finetune.scores)  # fine-tuning scores through ImageScores
    src = inspect.getsource(evaluate.ImageScores)
    assert "pooled_dice(" in src and "balanced_accuracy(" in src and "2.0 *" not in src
    pm = np.zeros((2, 4, 4), bool)
    tm = np.zeros((2, 4, 4), bool)
    pm[0, :2] = tm[0, 1:3] = True
    assert M.pooled_dice(*M.seg_sums(pm, tm)) == pytest.approx(2 * 4 / (8 + 8))
    assert M.pooled_dice(*M.seg_sums(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)))) == 1.0
    assert M.balanced_accuracy(np.array([0, 0, 1]), np.array([0, 1, 1])) == pytest.approx(0.75)
    assert math.isnan(M.balanced_accuracy(np.zeros(0), np.zeros(0)))


def test_mtunet_evaluate_on_busi_without_normal_images_names_the_absent_class_and_prints_no_warning(tmp_path):
    """The real command on real BUSI images of two of the three classes, in a fresh process (default warning
    filters, as a user runs it): the report averages over benign and malignant, says normal is absent, and
    nothing like ``RuntimeWarning: Mean of empty slice`` reaches the terminal."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    busi = Path(__file__).resolve().parents[2] / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT"
    if not busi.is_dir():
        pytest.skip("the BUSI data set is not here")
    ds = tmp_path / "busi_two_classes"
    for cls in ("benign", "malignant"):
        (ds / cls).mkdir(parents=True)
        images = sorted(p for p in (busi / cls).glob("*.png") if "_mask" not in p.name)[:6]
        for img in images:
            for src in [img, *sorted(img.parent.glob(img.stem + "_mask*.png"))]:
                shutil.copy(src, ds / cls / src.name)
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, class_names=["benign", "malignant", "normal"]),
                        Preprocessing(image_size=64)).eval()
    ckpt = save_checkpoint(tmp_path / "model.safetensors", model)
    proc = subprocess.run([sys.executable, "-m", "napari_mtunet.cli", "--threads", "1", "evaluate", str(ckpt), str(ds),
                           "--device", "cpu", "--n-boot", "200", "--json", str(tmp_path / "report.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr and "Mean of empty slice" not in proc.stdout + proc.stderr, proc.stderr
    assert "no image of class normal in this split" in proc.stdout
    assert "average the 2 classes present (benign, malignant)" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["classification"]["absent_classes"] == ["normal"]
