"""Smoke tests: every benchmark script runs in --quick mode and writes a well-formed JSON.

The scripts run in-process (``runpy``, so torch is imported once) with tiny
sizes; results go to a temporary folder, never to benchmarks/results.  Only
the JSON *structure* is checked: timings on shared CI machines mean nothing,
so there is deliberately no timing assertion here.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, tmp_path: Path, monkeypatch, *extra: str) -> dict:
    import torch

    script = BENCH / f"bench_{name}.py"
    monkeypatch.syspath_prepend(str(BENCH))
    # one torch thread: tiny ops on a shared CI machine are fastest (and least noisy) that way
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--results-dir", str(tmp_path), "--threads", "1", *extra])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / f"{name}.json"
    assert out.is_file(), f"{script.name} wrote no {out.name}"
    doc = json.loads(out.read_text())
    for key in ("benchmark", "quick", "command", "machine", "duration_s", "targets", "results"):
        assert key in doc, f"{out.name}: missing {key!r}"
    assert doc["benchmark"] == name
    assert doc["quick"] is True
    assert "torch" in doc["machine"] and "cpu" in doc["machine"]
    for t in doc["targets"]:
        assert set(t) >= {"name", "measured", "target", "pass"}
        assert isinstance(t["pass"], bool)
    return doc


def test_multitask_overhead(tmp_path, monkeypatch):
    doc = run_script("multitask_overhead", tmp_path, monkeypatch)
    (res,) = doc["results"]
    assert res["encoder"] == "mobilenet_v2"
    assert set(res["forward_gflops"]) == {"both", "seg", "cls"}
    for mode in ("train", "infer"):
        d = res[mode]
        assert set(d["median_s"]) == {"both", "seg", "cls", "seg+cls"}
        assert all(v > 0 for v in d["median_s"].values())
        assert d["ratio_both_vs_seg"]["median"] > 0 and d["ratio_both_vs_seg_plus_cls"]["median"] > 0
        assert len(d["times_s"]["both"]) == doc["config"]["repeats"]
    assert len(doc["targets"]) == 4


def test_predictor_overhead(tmp_path, monkeypatch):
    doc = run_script("predictor_overhead", tmp_path, monkeypatch)
    assert {r["mode"] for r in doc["results"]} == {"resize", "native"}
    for r in doc["results"]:
        assert r["median_ms_per_call"]["predict"] > 0 and r["median_ms_per_call"]["bare"] > 0
        assert r["ratio_predict_vs_bare"]["median"] > 0
    resize = next(r for r in doc["results"] if r["mode"] == "resize")
    assert resize["network_input"] == [1, 3, 64, 64]


def test_tiled_inference(tmp_path, monkeypatch):
    doc = run_script("tiled_inference", tmp_path, monkeypatch)
    sizes = [r["size"] for r in doc["results"]]
    assert sizes == [128, 192]
    for r in doc["results"]:
        assert r["tiles"] >= 1
        assert r["outputs_mb"] == pytest.approx(r["size"] ** 2 * 5 / 2**20)  # uint8 mask + float32 probability
        assert r["peak_rss_mb"] > 0 and r["throughput_ratio"] > 0
        assert r["largest_forward_batch"] == min(r["batch_size"], r["tiles_per_row"])
    assert len(doc["targets"]) == 5  # peak, spread (all sizes), spread (full batches), 2 x throughput


def test_gpu(tmp_path, monkeypatch, capsys):
    import torch

    doc = run_script("gpu", tmp_path, monkeypatch)
    variants = {"fp32", "fp16_cl", "bf16_cl"}
    if not torch.cuda.is_available():
        assert doc["skipped"] is True and doc["dry_run"] is True
        assert "no CUDA device: GPU benchmark skipped" in capsys.readouterr().out
        assert doc["targets"] == []
    assert {r["mode"] for r in doc["results"]} == {"train", "infer"}
    for r in doc["results"]:
        assert set(r["images_per_s"]) == variants
        assert set(r["speedup_vs_fp32"]) == variants - {"fp32"}


def test_input_pipeline(tmp_path, monkeypatch):
    doc = run_script("input_pipeline", tmp_path, monkeypatch)  # --quick: a phantom dataset in a temp folder
    res = doc["results"]
    assert res["dataset"]["n_samples"] == 12
    assert set(res["epoch_median_s"]) == {"loader_w0", "preloaded"}
    assert res["ratios"]["loader_w0"]["median"] > 0
    assert res["loader_alone_cold"]["loader_w0"]["images"] == 12
    assert res["loader_alone_warm"]["loader_w0"]["images_per_s"] > 0
    assert len(doc["targets"]) == 1


@pytest.mark.slow
@pytest.mark.gui
def test_napari_responsiveness(tmp_path, monkeypatch):
    pytest.importorskip("napari")
    doc = run_script("napari_responsiveness", tmp_path, monkeypatch)
    steps = doc["results"]
    assert {"idle", "dock", "set_model", "predict", "predict_again", "dock_train", "train", "dataset_check"} <= set(steps)
    assert steps["train"]["completed"] and steps["predict"]["completed"]
    assert steps["predict"]["labels_added"] is True and steps["train"]["checkpoint"] is True
    assert doc["errors"] == []
    for v in steps.values():
        assert v["worst_gap_ms"] >= 0 and v["ticks"] >= 1
    assert {"train", "predict"} <= {t["name"].split(":")[0] for t in doc["targets"]}


def test_cpu_channels_last(tmp_path, monkeypatch):
    doc = run_script("cpu_channels_last", tmp_path, monkeypatch)
    (res,) = doc["results"]
    for mode in ("train", "infer"):
        assert set(res[mode]["median_s"]) == {"nchw", "channels_last"}
        assert res[mode]["ratio_channels_last_vs_nchw"]["median"] > 0


def test_onnx_backend(tmp_path, monkeypatch):
    import os

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.delenv("MTUNET_CACHE_DIR", raising=False)
    doc = run_script("onnx_backend", tmp_path, monkeypatch)
    res = doc["results"]
    for section in ("predict", "tiled", "bare"):
        assert set(res[section]["median_s"]) >= {"torch", "onnxruntime"}
        assert res[section]["ratio_torch_vs_onnxruntime"]["median"] > 0
    assert "torch_channels_last" in res["bare"]["median_s"]
    for section in ("predict", "tiled"):
        agree = res["agreement"][section]
        assert agree["mask_pixels"] > 0 and agree["max_abs_class_probability_diff"] >= 0
    assert len(doc["targets"]) == 6
    assert "MTUNET_CACHE_DIR" not in os.environ  # the script's private ONNX cache is gone with it


def test_interactive(tmp_path, monkeypatch):
    doc = run_script("interactive", tmp_path, monkeypatch)
    names = {t["name"] for t in doc["targets"]}
    assert names == {"box/automatic", "first_click/automatic", "next_click/automatic"}
    ratios = doc["results"][0]["ratios"]
    assert set(ratios) == {"box", "first_click", "next_click"} and all(r > 0 for r in ratios.values())
