
import pytest
import torch

from napari_mtunet.checkpoint import load_checkpoint, read_metadata
from napari_mtunet.config import ModelConfig, Preprocessing, TrainConfig
from napari_mtunet.training import (
    CancelToken,
    History,
    Trainer,
    TrainingError,
    evaluate_model,
    parent_record,
)
from array_data import blobs_dataset

PRE = Preprocessing(image_size=64)


def mcfg(task="both", **kw):
    return ModelConfig(
        encoder_name="mobilenet_v2",
        encoder_weights=None,
        num_classes=2,
        task=task,
        class_names=["normal", "lesion"],
        **kw,
    )


def tcfg(**kw):
    base = dict(epochs=2, batch_size=4, lr=1e-3, device="cpu", early_stopping_patience=None, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    return blobs_dataset(8, 64, seed=0), blobs_dataset(4, 64, seed=1)


def test_training_reduces_loss(data):
    train, _ = data
    torch.manual_seed(0)
    t = Trainer(mcfg(), tcfg(epochs=4, lr=3e-3), train, None, preprocessing=PRE)
    res = t.fit()
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert res.monitor == "train_loss" and res.reason == "completed"


def test_events_checkpoints_and_generator(tmp_path, data):
    train, val = data
    hist = History()
    t = Trainer(mcfg(), tcfg(), train, val, preprocessing=PRE, out_dir=tmp_path, callbacks=[hist])
    events = list(t.iter_fit())
    kinds = [e.kind for e in events]
    assert kinds.count("batch_end") == 2 * 2 and kinds.count("epoch_end") == 2
    assert kinds[-1] == "finish" and "checkpoint" in kinds
    assert [e.kind for e in hist.events] == kinds  # callbacks see the same stream
    ep = hist.of("epoch_end")[0]
    assert {"val_loss", "val_dice", "val_accuracy"} <= set(ep.val)
    d = ep.to_dict()
    assert d["kind"] == "epoch_end" and isinstance(d["train"]["train_loss"], float)
    assert (tmp_path / "best.safetensors").is_file() and (tmp_path / "last.safetensors").is_file()
    model, info = load_checkpoint(tmp_path / "best.safetensors")
    assert info.training["monitor"] == "val_loss"
    assert info.class_names == ["normal", "lesion"]
    rep = evaluate_model(model, val, split="val", n_boot=50)
    assert rep.classification["accuracy"].n == 4 and rep.segmentation["dice"].n == 4
    assert "Dice" in rep.format()


def test_class_weights_from_training_split(data):
    train, _ = data
    t = Trainer(mcfg(), tcfg(), train, None, preprocessing=PRE, train_labels=[0, 0, 0, 1])
    assert t.class_weights.tolist() == pytest.approx([4 / 6, 2.0])
    t2 = Trainer(mcfg(task="seg"), tcfg(), train, None, preprocessing=PRE)
    assert t2.class_weights is None


def test_early_stopping(data):
    train, val = data
    # lr 0 -> nothing ever improves after the first epoch
    cfg = tcfg(epochs=10, early_stopping_patience=2, lr=1e-12, bn_recalibration_batches=0)
    t = Trainer(mcfg(task="cls"), cfg, train, val, preprocessing=PRE)
    res = t.fit()
    assert res.reason == "early_stopping"
    assert res.epochs_run == 3 and res.best_epoch == 1


def test_cancel_mid_epoch_keeps_best(tmp_path, data):
    train, val = data
    token = CancelToken()
    seen = {"n": 0}

    def cb(ev):
        if ev.kind == "batch_end":
            seen["n"] += 1
            if ev.epoch == 2 and ev.batch == 1:
                token.cancel()

    t = Trainer(mcfg(), tcfg(epochs=5), train, val, preprocessing=PRE, out_dir=tmp_path, callbacks=[cb], cancel=token)
    res = t.fit()
    assert res.reason == "cancelled"
    assert seen["n"] == 3  # 2 batches of epoch 1 + the first of epoch 2
    assert res.epochs_run == 1
    assert res.best_checkpoint is not None and res.best_checkpoint.is_file()
    assert read_metadata(res.last_checkpoint)["training"]["epoch"] == 1


@pytest.mark.parametrize("schedule", [None, "cosine"])
def test_resume_equals_uninterrupted(tmp_path, data, schedule):
    """Stopped after epoch 1 of 2 (cancel), then resumed: the same weights as an uninterrupted run,
    also with the default warm-up + cosine schedule (a pure function of the step)."""
    train, val = data
    kw = {"lr_schedule": schedule, "warmup_epochs": 0.5 if schedule else 0.0}
    full = Trainer(mcfg(), tcfg(epochs=2, **kw), train, val, preprocessing=PRE, out_dir=tmp_path / "a").fit()
    cancel = CancelToken()

    def stop_in_epoch_2(ev):
        if ev.kind == "batch_end" and ev.epoch == 2:
            cancel.cancel()

    part = Trainer(mcfg(), tcfg(epochs=2, **kw), train, val, preprocessing=PRE, out_dir=tmp_path / "b",
                   cancel=cancel, callbacks=[stop_in_epoch_2]).fit()
    assert part.reason == "cancelled" and part.epochs_run == 1
    resumed = Trainer(
        None, tcfg(epochs=2, **kw), train, val, out_dir=tmp_path / "b", resume_from=tmp_path / "b" / "last.safetensors"
    ).fit()
    assert resumed.epochs_run == 2 and len(resumed.history) == 2
    a, _ = load_checkpoint(full.last_checkpoint)
    b, _ = load_checkpoint(resumed.last_checkpoint)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert resumed.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=1e-6)


def test_freezing_keeps_encoder_weights_and_batchnorm_statistics(tmp_path, data):
    """freeze_encoder: no encoder parameter moves; freeze_bn: no BatchNorm statistic moves anywhere."""
    train, val = data
    base = Trainer(mcfg(), tcfg(epochs=1), train, val, preprocessing=PRE, out_dir=tmp_path / "base").fit()
    model, parent_info = load_checkpoint(base.best_checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = Trainer(model, tcfg(epochs=1), blobs_dataset(4, 64, seed=5), None, out_dir=tmp_path / "ft",
                freeze_encoder=True, freeze_bn=True, parent=parent_record(parent_info))
    res = t.fit()
    child, info = load_checkpoint(res.best_checkpoint)
    assert info.parent.startswith(parent_info.content_hash) and info.training["freeze_bn"] is True
    after = child.state_dict()
    for k, v in before.items():
        if k.startswith("encoder.") or "running_" in k:
            assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("decoder."))


def test_bad_monitor_for_task(data):
    train, val = data
    with pytest.raises(TrainingError, match="not available"):
        Trainer(mcfg(task="cls"), tcfg(monitor="val_dice"), train, val, preprocessing=PRE)


def test_failed_event_then_raise(data):
    train, _ = data
    hist = History()
    t = Trainer(mcfg(), tcfg(lr=10, w_seg=1e39), train, None, preprocessing=PRE, callbacks=[hist])
    with pytest.raises(Exception):
        t.fit()
    assert hist.events[-1].kind == "error"
