"""Every numeric option of ``mtunet`` has a sane range and a clear error: nothing out of range reaches torch.

``mtunet --threads 65536 info X`` crashed with a segmentation fault inside
torch's ``set_num_threads``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from napari_mtunet import cli


def _numeric_actions():
    """``(command, option, action)`` for every int/float option, sub-commands included."""
    parser = cli.build_parser()
    out = []

    def walk(p, command):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, name)
            elif action.dest in cli.NUMERIC_BOUNDS and action.option_strings:
                out.append((command, action.option_strings[-1], action))

    walk(parser, None)
    return out


ACTIONS = _numeric_actions()


def test_every_numeric_option_is_bounded():
    assert len(ACTIONS) > 40
    raw = argparse.ArgumentParser()
    raw.add_argument("--unbounded-thing", type=int)
    with pytest.raises(RuntimeError, match="no bounds"):  # a new numeric option without a range fails at once
        cli.bound_numeric_options(raw)


@pytest.mark.parametrize("command,option,action", ACTIONS, ids=[f"{c or 'mtunet'} {o}" for c, o, _ in ACTIONS])
def test_out_of_range_values_are_refused_with_the_range(command, option, action):
    lo, hi, lo_open = cli.NUMERIC_BOUNDS[action.dest]
    bad = [str(hi * 10 + 1), "nan", "inf", "-inf"]
    if lo > 0 or lo_open:
        bad.append(str(lo - 1 if not lo_open else lo))
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="from|above"):
            action.type(text)
    action.type(str(hi))  # the bounds themselves are allowed (the lower one unless excluded)
    if not lo_open:
        action.type(str(lo))


@pytest.mark.parametrize("argv,option", [
    (["--threads", "65536", "info", "x"], "--threads"),
    (["--threads", "0", "info", "x"], "--threads"),
    (["evaluate", "c", "d", "--n-boot", "100000000"], "--n-boot"),
    (["predict", "c", "i", "--out", "o", "--threshold", "1.5"], "--threshold"),
    (["train", "d", "--out", "o", "--epochs", "1e9"], "--epochs"),
    (["train", "d", "--out", "o", "--lr", "0"], "--lr"),
    (["demo", "--size", "100000"], "--size"),
    (["experiment", "d", "--study", "finetune", "--k", "0"], "--k"),
    (["experiment", "d", "--only-folds", "0,x"], "--only-folds"),
])
def test_the_command_line_says_which_option_and_exits_2(argv, option, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and ("from" in err or "above" in err), err


def test_threads_65536_no_longer_crashes_the_process():
    proc = subprocess.run([sys.executable, "-m", "napari_mtunet.cli", "--threads", "65536", "info", "nowhere"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-500:])  # not -11 / 139
    assert "--threads: must be an integer from 1 to 1024" in proc.stderr


def test_in_range_values_still_work(tmp_path, capsys):
    assert cli.main(["--threads", "1", "info", str(tmp_path / "missing")]) == 1  # parsed; fails on the data only
    assert "missing" in capsys.readouterr().err
    ns = cli.build_parser().parse_args(["experiment", "d", "--study", "finetune", "--k", "5", "--draws", "3"])
    assert ns.k == 5 and ns.draws == 3
    ns = cli.build_parser().parse_args(["experiment", "d", "--only-folds", " 0,2"])
    assert ns.only_folds == "0,2"
