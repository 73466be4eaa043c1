"""Interactive segmentation end to end: the model's guidance channels, checkpoints, the Predictor's prompts,
training with the simulated user and `mtunet evaluate --interactive`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_mtunet.config import IMAGE_CHANNELS, ConfigError, ModelConfig, Preprocessing, RunConfig
from napari_mtunet.model import build_model
from napari_mtunet.prompts import PromptError, bbox

CLASSES = ["benign", "malignant", "normal"]


def _model(prompts: bool, seed: int = 0, size: int = 64):
    torch.manual_seed(seed)
    return build_model(ModelConfig(encoder_weights=None, class_names=CLASSES, prompts=prompts),
                       Preprocessing(image_size=size)).eval()


def _busi_pair(busi_root, name="benign (1)"):
    from napari_mtunet.data.io import read_image, read_mask

    folder = busi_root / name.split(" ")[0]
    return read_image(folder / f"{name}.png"), read_mask(folder / f"{name}_mask.png") > 0


# --------------------------------------------------------------------------- model


def test_guidance_channels_start_at_zero_so_the_automatic_mode_is_the_image_only_network():
    plain, prompted = _model(False), _model(True)
    assert prompted.config.input_channels == IMAGE_CHANNELS + 4 and plain.config.input_channels == IMAGE_CHANNELS
    state = {k: v for k, v in prompted.state_dict().items()}
    for k, v in plain.state_dict().items():
        if v.shape != state[k].shape:  # the first convolution: RGB weights kept, guidance weights zero
            assert torch.equal(state[k][:, :IMAGE_CHANNELS], v) and not state[k][:, IMAGE_CHANNELS:].any()
        else:
            assert torch.equal(state[k], v)
    x = torch.rand(2, 3, 64, 64)
    a, b = plain(x), prompted(x)
    c = prompted(torch.cat([x, torch.zeros(2, 4, 64, 64)], 1))
    assert torch.allclose(a.seg, b.seg) and torch.allclose(a.cls, b.cls) and torch.equal(b.seg, c.seg)
    with pytest.raises(ValueError, match=r"expected a \(B, 3 or 7"):
        prompted(torch.rand(1, 5, 64, 64))
    with pytest.raises(ValueError, match=r"expected a \(B, 3, H, W\)"):
        plain(torch.rand(1, 7, 64, 64))


def test_pretrained_rgb_weights_are_kept_when_guidance_is_added():
    cfg = ModelConfig(encoder_name="timm-tf_efficientnet_lite0", encoder_weights="imagenet", class_names=CLASSES)
    plain = build_model(cfg)
    prompted = build_model(cfg.replace(prompts=True))
    w_plain, w = plain.encoder.conv_stem.weight, prompted.encoder.conv_stem.weight
    assert w.shape[1] == 7 and torch.equal(w[:, :3], w_plain) and not w[:, 3:].any()
    assert prompted.weights_provenance == plain.weights_provenance and prompted.config.prompts


def test_interactive_config_rules():
    with pytest.raises(ConfigError, match="native-resolution"):
        RunConfig(model=ModelConfig(prompts=True), preprocessing=Preprocessing(resize=False))
    with pytest.raises(ConfigError, match="segmentation head"):
        RunConfig(model=ModelConfig(prompts=True, task="cls"))
    run = RunConfig(model=ModelConfig(prompts=True, class_names=CLASSES))
    back = RunConfig.from_dict(json.loads(json.dumps(run.to_dict())))
    assert back.model.prompts and back.interactive == run.interactive


def test_interactive_checkpoint_round_trip_and_old_checkpoints_load_unchanged(tmp_path):
    from safetensors.torch import load_file, save_file

    from napari_mtunet import checkpoint as ckpt
    from napari_mtunet.checkpoint import load_checkpoint, read_metadata, save_checkpoint

    prompted = _model(True)
    with torch.no_grad():
        prompted.encoder.features[0][0].weight[:, 3:] = 0.05  # as if trained
    path = save_checkpoint(tmp_path / "i.safetensors", prompted)
    loaded, info = load_checkpoint(path)
    assert info.model_config.prompts and loaded.config.input_channels == 7
    x = torch.rand(1, 7, 64, 64)
    assert torch.equal(loaded(x).seg, prompted(x).seg)

    # a checkpoint written before prompts existed (no 'prompts' field, run config version 2) loads as before
    plain = _model(False)
    new = save_checkpoint(tmp_path / "p.safetensors", plain)
    meta = read_metadata(new)
    meta["model"].pop("prompts")
    if meta.get("run"):
        meta["run"]["model"].pop("prompts")
        meta["run"].pop("interactive")
        meta["run"]["version"] = 2
    if meta.get("hash_version") == 2:
        meta["metadata_hash"] = ckpt.metadata_hash(meta)
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(new)), str(old), metadata={ckpt.META_KEY: json.dumps(meta)})
    model, info = load_checkpoint(old)
    assert not info.model_config.prompts and model.config.input_channels == IMAGE_CHANNELS
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(model(x).seg, plain(x).seg) and torch.equal(model(x).cls, plain(x).cls)


# --------------------------------------------------------------------------- Predictor


def test_prompts_for_a_model_trained_without_them_are_refused(busi_root):
    from napari_mtunet.inference import Predictor

    image, truth = _busi_pair(busi_root)
    p = Predictor(_model(False))
    assert not p.accepts_prompts
    with pytest.raises(PromptError, match="trained without prompts.*--interactive"):
        p.predict(image, box=bbox(truth))
    auto = p.predict(image)
    assert auto.mask.shape == truth.shape and auto.region is None


def test_prompted_prediction_on_a_real_image(busi_root):
    from napari_mtunet.inference import Predictor

    image, truth = _busi_pair(busi_root)
    p = Predictor(_model(True))
    box = bbox(truth)
    pred = p.predict(image, box=box)
    assert pred.mask.shape == truth.shape and pred.mask.dtype == np.uint8
    assert pred.mode == "prompted" and pred.class_name in CLASSES
    assert abs(pred.class_probabilities.sum() - 1) < 1e-5
    # the zoomed region holds the box with its margin and is far smaller than the image
    r0, c0, r1, c1 = pred.region
    assert r0 <= box[0] and c0 <= box[1] and r1 >= box[2] and c1 >= box[3]
    assert (r1 - r0) * (c1 - c0) < 0.5 * truth.size
    assert not pred.mask[:r0].any() and not pred.mask[r1:].any()
    # clicks: every click ends on its side, and a point outside the image is refused with its coordinates
    row, col = np.argwhere(truth)[len(np.argwhere(truth)) // 2]
    clicked = p.predict(image, points=[(int(row), int(col), True), (5, 5, False)])
    assert clicked.mask[row, col] == 1 and clicked.mask[5, 5] == 0
    with pytest.raises(PromptError, match=r"point 0 \(9999, 3\) lies outside the image"):
        p.predict(image, points=[(9999, 3, True)])
    with pytest.raises(PromptError, match="one slice"):
        p.predict(np.stack([image[..., 0]] * 3), points=[(1, 1, True)])
    with pytest.raises(PromptError, match="clicks or a box"):
        p.predict(image, previous_mask=truth)


def test_a_small_object_in_a_large_image_is_run_at_full_resolution(busi_root):
    """The prompts choose the region: a 30-pixel box in a 2000 x 3000 image is run as a region of a few hundred
    pixels, not as the whole image shrunk to the input size."""
    from napari_mtunet.inference import Predictor

    p = Predictor(_model(True))
    image = np.random.default_rng(0).integers(0, 255, (2000, 3000), dtype=np.uint8)
    pred = p.predict(image, box=(1000, 2000, 1030, 2030))
    r0, c0, r1, c1 = pred.region
    assert max(r1 - r0, c1 - c0) == round(0.15 * 3000)  # min_zoom of the longer side
    assert pred.mask.shape == image.shape


# --------------------------------------------------------------------------- training and evaluation


@pytest.fixture(scope="module")
def interactive_run(tmp_path_factory, busi_root):
    """A short interactive training on 36 real BUSI images (64 px, 2 epochs, random init)."""
    from napari_mtunet.config import DataConfig, TrainConfig
    from napari_mtunet.events import drive
    from napari_mtunet.workflows import iter_train

    out = tmp_path_factory.mktemp("interactive")
    run = RunConfig(
        model=ModelConfig(encoder_weights=None, prompts=True),
        preprocessing=Preprocessing(image_size=64),
        data=DataConfig(root=str(busi_root), max_samples=36, val_fraction=0.25),
        train=TrainConfig(epochs=2, batch_size=8, seed=0),
    )
    outcome = drive(iter_train(run, out))
    return outcome


def test_interactive_training_learns_the_guidance_channels(interactive_run):
    from napari_mtunet.checkpoint import load_checkpoint

    model, info = load_checkpoint(interactive_run.best_checkpoint)
    assert info.model_config.prompts and info.run.model.prompts
    w = model.encoder.features[0][0].weight
    assert w.shape[1] == 7 and w[:, 3:].abs().sum() > 0  # the guidance weights moved off zero
    n_train, n_val = info.training["n_train"], info.training["n_val"]
    views = 1 + info.run.interactive.prompted_per_image  # each training image: automatic + prompted views
    assert views == int(views) and n_train % int(views) == 0 and n_train // int(views) + n_val == 36


def test_click_simulator_adds_clicks_in_the_error_region():
    from napari_mtunet.config import InteractiveConfig
    from napari_mtunet.training.prompting import NEGATIVE, POSITIVE, PREVIOUS, ClickSimulator

    class Empty(torch.nn.Module):  # predicts nothing: every next click is positive, inside the object
        def forward(self, x):
            from napari_mtunet.model import ModelOutput

            return ModelOutput(torch.full((len(x), 1, *x.shape[-2:]), -10.0), None)

    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    x = torch.zeros(2, 7, 32, 32)
    batch = {"mask": mask, "iterations": torch.tensor([2, 0])}
    out = ClickSimulator(InteractiveConfig(click_radius=2))(Empty(), x, batch)
    assert out[0, POSITIVE].sum() > 0 and out[0, NEGATIVE].sum() == 0
    assert (out[0, POSITIVE] * (1 - mask[0, 0])).sum() == 0  # inside the object
    assert out[1].abs().sum() == 0  # no iterations: untouched
    assert out[0, PREVIOUS].sum() == 0  # the previous mask is the (empty) prediction


@pytest.mark.slow
def test_evaluate_interactive_cli(interactive_run, busi_root, capsys, tmp_path):
    from napari_mtunet.cli import main

    out = tmp_path / "inter.json"
    code = main(["evaluate", str(interactive_run.best_checkpoint), str(busi_root), "--interactive", "--split", "val",
                 "--max-clicks", "6", "--n-boot", "50", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    for word in ("box_dice", "ellipse_in_box_dice", "iou_at_1", "iou_at_5", "noc_85", "noc_90",
                 "clicked pixel on the clicked side"):
        assert word in text
    report = json.loads(out.read_text())
    assert report["max_clicks"] == 6 and report["n_images"] >= 1
    curve = report["mean_iou_curve"]
    assert len(curve) == 6 and all(0 <= v <= 1 for v in curve)
    img = report["images"][0]
    assert 1 <= img["noc_85"] <= 6 and 0 <= img["box_dice"] <= 1 and img["ellipse_dice"] > 0.5


def test_evaluate_interactive_refuses_a_model_without_prompts(tmp_path, busi_root, capsys):
    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.cli import main

    path = save_checkpoint(tmp_path / "plain.safetensors", _model(False))
    code = main(["evaluate", str(path), str(busi_root), "--interactive"])
    err = capsys.readouterr().err
    assert code == 1 and "trained without prompts" in err and "Traceback" not in err


def test_a_mask_cut_by_the_region_edge_grows_the_region_and_runs_again():
    """When the object reaches the edge of the region that was run, the region grows around the mask (at most
    twice); with InteractiveConfig.grow_region off it does not."""
    from dataclasses import replace

    from napari_mtunet.inference import GROW_PASSES, Predictor, touches_region_edge
    from napari_mtunet.model import ModelOutput

    m = np.zeros((100, 100), bool)
    m[40:60, 40:60] = True
    assert not touches_region_edge(m, (30, 30, 70, 70))
    assert touches_region_edge(m, (45, 30, 70, 70))  # cut at the top
    assert touches_region_edge(m, (40, 40, 100, 100))  # its top and left edges lie inside the image
    full = np.ones((100, 100), bool)
    assert not touches_region_edge(full, (0, 0, 100, 100))  # the image's own edges do not count

    model = _model(True)
    calls = []

    class Everything(torch.nn.Module):  # the network says "lesion" everywhere: the mask always reaches the edge
        def __init__(self):
            super().__init__()
            self.net = model
            self.config, self.preprocessing, self.output_stride = model.config, model.preprocessing, 32

        def forward(self, x):
            calls.append(x.shape)
            out = model(x)
            return ModelOutput(torch.full_like(out.seg, 10.0), out.cls)

    p = Predictor(model)
    p.model = Everything()
    image = np.random.default_rng(0).integers(0, 255, (400, 600), dtype=np.uint8)
    pred = p.predict(image, box=(180, 280, 220, 320))
    assert len(calls) == 1 + GROW_PASSES
    r0, c0, r1, c1 = pred.region
    assert (r1 - r0) > 100 and (c1 - c0) > 100  # grown from the box's region
    calls.clear()
    p.interactive = replace(p.interactive, grow_region=False)
    p.predict(image, box=(180, 280, 220, 320))
    assert len(calls) == 1
