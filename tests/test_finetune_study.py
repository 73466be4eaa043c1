"""The fine-tuning study: scanner shifts are deterministic and real; the protocol runs end to end and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mtunet.finetune_study import SHIFTS, FinetuneStudySettings, apply_shift, run_finetune_study
from napari_mtunet.sample_data import make_phantom, write_phantom_dataset


def test_shifts_are_deterministic_and_change_intensities_only():
    img = make_phantom(n=1, size=96, seed=2).images[0]
    for name in SHIFTS:
        a, b = apply_shift(img, name, seed=5), apply_shift(img, name, seed=5)
        assert a.dtype == np.uint8 and a.shape == (96, 96, 3)
        np.testing.assert_array_equal(a, b)
        if name == "none":
            np.testing.assert_array_equal(a[..., 0], img)
        else:
            assert np.abs(a[..., 0].astype(int) - img.astype(int)).mean() > 2, name
    # depth attenuation darkens the bottom more than the top
    d = apply_shift(img, "depth", 0)[..., 0].astype(float) / np.maximum(img.astype(float), 1)
    assert d[-10:].mean() < d[:10].mean()
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(img, "sepia", 0)


def test_tiny_study_end_to_end_and_resume(tmp_path):
    data = write_phantom_dataset(tmp_path / "ph", n=30, size=64, seed=4)
    settings = FinetuneStudySettings(
        dataset=str(data), shifts=["none", "blur"], ks=[2], repeats=1, encoder="mobilenet_v2", encoder_weights=None,
        base_epochs=1, image_size=64, device="cpu",
        config={"min_steps": 2, "max_steps": 2, "batch_size": 4},
    )
    out = tmp_path / "study"
    logs: list[str] = []
    report = run_finetune_study(settings, out, log=logs.append)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["shift"], r["k"]) for r in rows} == {("none", 2), ("blur", 2)}
    for r in rows:
        assert r["steps"] == 2 and r["n_rest"] == json.loads((out / "data" / "parts.json").read_text())["B"] - 2
        assert 0 <= r["child_B"]["dice"] <= 1 and 0 <= r["base_B"]["dice"] <= 1
        assert r["base_A"] and r["child_A"]  # forgetting measured on A's held-out part
    text = report.read_text()
    assert "| blur | 2 |" in text and (out / "finetune_dice_vs_k.png").is_file()
    # the shifted images really differ from the unshifted ones
    a = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(sorted((out / "data" / "B_none" / "images").iterdir())[0]))
    b = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(sorted((out / "data" / "B_blur" / "images").iterdir())[0]))
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 1
    # resuming does no finished work again
    logs.clear()
    run_finetune_study(settings, out, log=logs.append)
    assert not any("k=2" in line for line in logs)
    # other fine-tune settings in the same folder are refused (their results would be mixed with these)
    import dataclasses

    import pytest

    other = dataclasses.replace(settings, config={**settings.config, "lr": 1e-3})
    with pytest.raises(ValueError, match="other settings .*config"):
        run_finetune_study(other, out, log=logs.append)
    assert json.loads((out / "study.json").read_text())["config"] == settings.config  # not overwritten
