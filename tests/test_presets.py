"""Named recipes (presets): what `mtunet train` starts from, recorded in the run config."""

from __future__ import annotations

import pytest

from napari_mtunet.cli import build_parser, run_from_args
from napari_mtunet.config import DEFAULT_PRESET, PRESETS, ConfigError, RunConfig


def test_presets_override_the_defaults_and_are_recorded():
    assert DEFAULT_PRESET == "cpu" and set(PRESETS) == {"cpu", "gpu"}
    cpu, gpu = RunConfig.from_preset("cpu"), RunConfig.from_preset("gpu")
    for run, name in ((cpu, "cpu"), (gpu, "gpu")):
        assert run.preset == name and run.model.encoder_name == "timm-tf_efficientnet_lite0"
        assert run.model.encoder_weights == "imagenet"  # offline: the weights ship with a dependency
        assert RunConfig.from_dict(run.to_dict()) == run  # saved whole, read back whole
    assert (gpu.preprocessing.image_size, gpu.train.epochs, gpu.train.batch_size,
            gpu.train.early_stopping_patience) == (256, 50, 32, 10)  # the paper's budget
    assert cpu.preprocessing.image_size == 128 and cpu.train.epochs == 20
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        RunConfig.from_preset("fast")
    with pytest.raises(ConfigError, match="preset must be one of"):
        RunConfig(preset="fast")


def test_cli_starts_from_the_preset_and_options_override_it(tmp_path):
    p = build_parser()
    args = p.parse_args(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--preset", "gpu", "--epochs", "7"])
    run = run_from_args(args, RunConfig.from_preset(args.preset))
    assert run.preset == "gpu" and run.train.epochs == 7 and run.preprocessing.image_size == 256
    args = p.parse_args(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--no-interactive"])
    run = run_from_args(args, RunConfig.from_preset())
    assert run.preset == "cpu" and not run.model.prompts


def test_a_preset_with_resume_is_refused(tmp_path, capsys):
    from napari_mtunet.cli import main

    code = main(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--preset", "gpu",
                 "--resume", str(tmp_path / "last.safetensors")])
    err = capsys.readouterr().err
    assert code == 1 and "--preset starts a new run" in err
