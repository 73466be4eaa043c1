"""Scanner shifts and the fine-tuning study (select shifts choose, fresh report shifts report)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mtunet.finetune_study import METHODS, FinetuneStudySettings, choose, gains, run_finetune_study
from napari_mtunet.sample_data import write_phantom_dataset
from napari_mtunet.shifts import COMPONENTS, Shift, draw_shift, draw_shifts


def _image(seed=0):
    rng = np.random.default_rng(seed)
    img = (rng.random((60, 80)) * 200 + 30).astype(np.uint8)
    return np.stack([img] * 3, axis=-1)


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_shift_component_changes_the_image_deterministically(component):
    lo, hi = COMPONENTS[component]
    p = hi if component != "offset" else lo
    shift = Shift([(component, p)])
    img = _image()
    a, b = shift.apply(img, seed=3), shift.apply(img, seed=3)
    assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b)
    assert np.abs(a.astype(int) - img.astype(int)).mean() > 1.0
    assert Shift.from_dict(json.loads(json.dumps(shift.to_dict()))).components == shift.components


def test_drawn_shifts_are_varied_seeded_and_the_report_set_is_not_the_select_set():
    shifts = draw_shifts(40, seed=1)
    assert [s.name for s in shifts] == [s.name for s in draw_shifts(40, seed=1)]
    used = {c for s in shifts for c, _ in s.components}
    assert used == set(COMPONENTS)  # the whole family is drawn from
    assert all(2 <= len(s.components) <= 4 for s in shifts)
    st = FinetuneStudySettings(dataset="x")
    assert not {s.name for s in st.shifts("select")} & {s.name for s in st.shifts("report")}
    with pytest.raises(ValueError, match="unknown shift component"):
        Shift.from_dict({"components": [["sepia", 1.0]]})
    assert draw_shift(np.random.default_rng(0)).apply(_image()).shape == (60, 80, 3)


def test_choose_prefers_the_best_median_gain_that_never_loses_in_the_lower_tail():
    table = {
        "ft_lr3e-4": {"gain_median": 0.08, "gain_p10": -0.05, "bacc_median": 0.0, "forgetting_median": 0.0},
        "ft_lr3e-5": {"gain_median": 0.03, "gain_p10": 0.00, "bacc_median": 0.0, "forgetting_median": -0.01},
        "bn_new": {"gain_median": 0.06, "gain_p10": 0.01, "bacc_median": 0.0, "forgetting_median": -0.02},
        "bn_mix_ft_lr3e-5": {"gain_median": 0.09, "gain_p10": 0.02, "bacc_median": -0.05, "forgetting_median": 0.0},
    }
    assert choose(table) == "bn_new"
    assert choose(table, unlabelled=False) == "ft_lr3e-5"
    rows = [{"child_shifted": {"dice": 0.6 + d, "balanced_accuracy": 0.7}, "base_shifted": {"dice": 0.6,
             "balanced_accuracy": 0.7}, "child_plain": {"dice": 0.7}, "base_plain": {"dice": 0.7}, "seconds": 10}
            for d in (-0.02, 0.01, 0.05, 0.07)]
    g = gains(rows)
    assert g["n"] == 4 and abs(g["gain_median"] - 0.03) < 1e-9 and g["gain_min"] == pytest.approx(-0.02)
    assert g["losses"] == 0.25


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tmp_path):
    data = write_phantom_dataset(tmp_path / "phantom", n=40, size=64, seed=4)
    settings = FinetuneStudySettings(
        dataset=str(data), methods=["ft_lr3e-5", "bn_new"], n_bases=1, n_select=1, n_report=1, draws=1, k=3,
        n_unlabelled=4, n_score=6, b_fraction=0.5, encoder="mobilenet_v2", encoder_weights=None, base_epochs=1,
        image_size=64, device="cpu")
    out = tmp_path / "study"
    logs: list[str] = []
    report = run_finetune_study(settings, out, log=logs.append)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["set"], r["method"]) for r in rows} == {(s, m) for s in ("select", "report")
                                                      for m in ("ft_lr3e-5", "bn_new")}
    for r in rows:
        assert r["n_corrections"] == 3 and r["base_shifted"]["n"] == 6
        assert r["n_unlabelled"] == 4
        assert 0 <= r["child_shifted"]["dice"] <= 1 and r["seconds"] > 0
    bn_only = next(r for r in rows if r["method"] == "bn_new")
    assert bn_only["steps"] == 0  # adapt only
    text = report.read_text()
    assert "select set" in text and "report set" in text and "Chosen on the select set" in text
    # resuming runs nothing again; other settings are refused
    n = len(rows)
    run_finetune_study(settings, out, log=logs.append)
    assert len((out / "results.jsonl").read_text().splitlines()) == n
    other = FinetuneStudySettings(**{**settings.__dict__, "k": 4})
    with pytest.raises(ValueError, match="other settings"):
        run_finetune_study(other, out, log=logs.append)
    assert set(METHODS) >= set(settings.methods)
