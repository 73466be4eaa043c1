import json

import pytest

from napari_mtunet.experiments import ExperimentSettings, paired_tests, parse_ratios, plan_runs, run_experiment
from napari_mtunet.sample_data import write_phantom_dataset


def test_plan_covers_the_paper_protocol():
    s = ExperimentSettings(dataset="x", folds=3)
    runs = plan_runs(s)
    keys = {(r.encoder, r.variant) for r in runs}
    for enc in ("vgg16", "mobilenet_v2"):
        assert {(enc, v) for v in ("multi", "seg_only", "cls_only", "multi_noskip")} <= keys
        sweep = {r.variant for r in runs if r.encoder == enc and r.variant.startswith("w")}
        assert sweep == {"w1-1", "w2-1", "w10-1", "w1-2", "w1-5", "w1-10"}  # 5:1 is "multi"
    assert len(runs) == 2 * 3 * (3 + 1 + 6)
    noskip = [r for r in runs if r.variant == "multi_noskip"]
    assert all(not r.skip and r.task == "both" for r in noskip)
    with pytest.raises(ValueError):
        ExperimentSettings(dataset="x", studies=["nope"])


def test_weight_sweep_can_be_restricted_without_changing_the_experiment():
    full = ExperimentSettings(dataset="x", encoders=["mobilenet_v2"], studies=["weights"], folds=3)
    some = ExperimentSettings(dataset="x", encoders=["mobilenet_v2"], studies=["weights"], folds=3,
                              weight_ratios=parse_ratios("1:1, 5:1,10:1"))
    assert {r.variant for r in plan_runs(some)} == {"multi", "w1-1", "w10-1"}
    assert full.fingerprint() == some.fingerprint()  # same experiment folder, more runs later
    for bad in ("1:x", "", "2", "0:0"):
        with pytest.raises(ValueError, match="ratio"):
            ExperimentSettings(dataset="x", weight_ratios=parse_ratios(bad))


def _res(enc, var, fold, **m):
    return {"spec": {"encoder": enc, "variant": var, "fold": fold}, "metrics": m}


def test_paired_t_test_against_scipy():
    from scipy import stats

    multi = [0.70, 0.75, 0.80]
    seg = [0.60, 0.70, 0.72]
    results = [_res("e", "multi", f, dice=d, accuracy=0.5) for f, d in enumerate(multi)]
    results += [_res("e", "seg_only", f, dice=d) for f, d in enumerate(seg)]
    rows = [r for r in paired_tests(results) if r["metric"] == "dice" and r["comparison"] == "multi vs seg_only"]
    assert len(rows) == 1
    t, p = stats.ttest_rel(multi, seg)
    assert rows[0]["t"] == pytest.approx(t) and rows[0]["p"] == pytest.approx(p)
    assert rows[0]["n_folds"] == 3 and rows[0]["mean_diff"] == pytest.approx(0.23 / 3)


@pytest.mark.slow
def test_tiny_experiment_end_to_end_and_resume(tmp_path):
    data = write_phantom_dataset(tmp_path / "data", n=18, size=64, seed=2)
    s = ExperimentSettings(
        dataset=str(data), encoders=["mobilenet_v2"], studies=["baselines"], folds=2, epochs=1,
        image_size=32, batch_size=8, encoder_weights=None, device="cpu", n_boot=50, augment=False,
    )
    out = tmp_path / "exp"
    logs = []
    report = run_experiment(s, out, log=logs.append)
    text = report.read_text()
    assert "Paired t-tests" in text and "multi vs seg_only" in text and "multi vs cls_only" in text
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 6
    for name in ("summary.csv", "tests.csv", "learning_curves_mobilenet_v2.png", "confusion_mobilenet_v2.png",
                 "examples_gradcam_mobilenet_v2.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("runs/*/*/*/last.safetensors"))  # finished runs drop optimizer state
    # resumable: nothing is retrained
    logs2 = []
    run_experiment(s, out, log=logs2.append)
    assert sum("done already" in line for line in logs2) == 6
    assert not any("training" in line for line in logs2)
    # a run another process has claimed is skipped, not trained twice into the same folder
    from filelock import FileLock

    (out / "runs" / "mobilenet_v2" / "seg_only" / "fold1" / "result.json").unlink()
    with FileLock(str(out / "runs" / "mobilenet_v2" / "seg_only" / ".fold1.lock")):
        logs3 = []
        run_experiment(s, out, log=logs3.append)
    assert any("seg_only/fold1: being trained by another process" in line for line in logs3)
    assert not any("training" in line for line in logs3)
    # different settings in the same folder are refused
    s2 = ExperimentSettings(**{**json.loads((out / "settings.json").read_text())["settings"], "epochs": 2})
    with pytest.raises(ValueError, match="different settings"):
        run_experiment(s2, out, log=logs.append)
