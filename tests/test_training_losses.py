import pytest
import torch
from torch.nn import functional as F

from napari_mtunet.model import ModelOutput
from napari_mtunet.training.losses import MultiTaskLoss, balanced_class_weights


def test_balanced_class_weights_matches_sklearn_formula():
    labels = [0, 0, 0, 1, 2, 2, -1]
    w = balanced_class_weights(labels, 3)
    # n / (k * count): 6 / (3*3), 6/(3*1), 6/(3*2)
    assert w.tolist() == pytest.approx([6 / 9, 2.0, 1.0])


def test_absent_class_gets_weight_one():
    w = balanced_class_weights([0, 0, 1], 3)
    assert w[2] == 1.0
    assert w[0] == pytest.approx(3 / (2 * 2))


def _batch():
    torch.manual_seed(0)
    seg = torch.randn(4, 1, 8, 8)
    cls = torch.randn(4, 3)
    batch = {
        "mask": (torch.rand(4, 1, 8, 8) > 0.5).float(),
        "label": torch.tensor([0, 1, -1, 2]),
        "has_mask": torch.tensor([True, False, True, True]),
        "has_label": torch.tensor([True, True, False, True]),
    }
    return ModelOutput(seg, cls), batch


def test_weighting_and_masking():
    out, batch = _batch()
    cw = torch.tensor([1.0, 2.0, 0.5])
    loss = MultiTaskLoss("both", w_seg=5, w_cls=1, class_weights=cw)
    parts = loss(out, batch)
    sel = batch["has_mask"]
    seg = F.binary_cross_entropy_with_logits(out.seg[sel], batch["mask"][sel])
    lsel = torch.tensor([True, True, False, True])
    cls = F.cross_entropy(out.cls[lsel], batch["label"][lsel], weight=cw)
    assert parts.seg == pytest.approx(float(seg), rel=1e-5)
    assert parts.cls == pytest.approx(float(cls), rel=1e-5)
    assert float(parts.total) == pytest.approx(5 * float(seg) + float(cls), rel=1e-5)
    assert parts.n_seg == 3 and parts.n_cls == 3


def test_single_task_uses_one_term_with_its_configured_weight():
    """The loss uses the weights the checkpoint records (RunConfig.effective_loss_weights), never others."""
    out, batch = _batch()
    seg_only = MultiTaskLoss("seg", w_seg=5, w_cls=1)(ModelOutput(out.seg, None), batch)
    assert seg_only.cls is None and float(seg_only.total) == pytest.approx(5 * seg_only.seg)
    cls_only = MultiTaskLoss("cls", w_seg=5, w_cls=2)(ModelOutput(None, out.cls), batch)
    assert cls_only.seg is None and float(cls_only.total) == pytest.approx(2 * cls_only.cls)
    with pytest.raises(ValueError, match="w_seg > 0"):
        MultiTaskLoss("seg", w_seg=0, w_cls=1)


def test_no_eligible_samples_gives_zero_with_gradient():
    out, batch = _batch()
    seg = out.seg.clone().requires_grad_(True)
    batch["has_mask"] = torch.zeros(4, dtype=torch.bool)
    parts = MultiTaskLoss("seg")(ModelOutput(seg, None), batch)
    assert parts.seg is None and float(parts.total) == 0.0
    parts.total.backward()
    assert seg.grad is not None and float(seg.grad.abs().sum()) == 0.0


def test_dice_bce_option():
    out, batch = _batch()
    bce = MultiTaskLoss("seg", seg_loss="bce")(ModelOutput(out.seg, None), batch)
    both = MultiTaskLoss("seg", seg_loss="dice_bce")(ModelOutput(out.seg, None), batch)
    assert both.seg > bce.seg
