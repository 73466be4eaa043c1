"""A torch/torchvision pair that cannot work together is named, with the pair to install.

CPU torch beside PyPI's (CUDA) torchvision fails at import with "operator torchvision::nms does not
exist", which says nothing about the cause.  ``import napari_mtunet`` arms a one-shot check
(napari_mtunet/__init__.py): metadata only, and only a failing import is changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import napari_mtunet
from napari_mtunet import _torch_pair_problem

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "torch_v, tv_v, requires, platform, bad",
    [
        ("2.13.0+cpu", "0.28.0", ["torch==2.13.0"], "linux", "default PyPI build"),  # the case users hit
        ("2.13.0+cpu", "0.28.0+cpu", ["torch==2.13.0"], "linux", None),  # both from the CPU index
        ("2.14.1", "0.29.1", ["torch==2.14.1"], "linux", None),  # both from PyPI
        ("2.14.1+cu130", "0.29.1+cu130", ["torch==2.14.1"], "linux", None),
        ("2.13.0", "0.29.1", ["torch==2.14.1"], "linux", "built for torch==2.14.1"),  # another release
        ("2.13.0+cpu", "0.28.0", ["torch==2.13.0"], "win32", None),  # PyPI's Windows wheels are CPU builds
        ("2.13.0+cu126", "0.28.0+cpu", ["torch==2.13.0"], "linux", "'cu126' build"),
        ("2.6.0a0+git1234", "0.21.0a0+abcd", [], "linux", None),  # source builds: no claim
    ],
)
def test_the_pair_rule(torch_v, tv_v, requires, platform, bad):
    got = _torch_pair_problem(torch_v, tv_v, requires, platform=platform)
    if bad is None:
        assert got is None
    else:
        assert got is not None and bad in got, got


def _fake_site(tmp: Path, torch_v: str, tv_v: str, fails: bool) -> Path:
    site = tmp / "site"
    for name, version, requires in (("torch", torch_v, ""), ("torchvision", tv_v, "Requires-Dist: torch==2.13.0\n")):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires}")
    pkg = site / "torchvision"
    pkg.mkdir()
    body = 'raise RuntimeError("operator torchvision::nms does not exist")\n' if fails else "OK = True\n"
    (pkg / "__init__.py").write_text(body)
    return site


def _import_in_subprocess(site: Path) -> subprocess.CompletedProcess:
    code = "import napari_mtunet\nimport torchvision\nprint('imported', torchvision.OK)\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(napari_mtunet.__file__).parents[1])])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU/CUDA wheel rule is Linux's")
def test_a_failing_import_of_a_mismatched_pair_says_what_to_install(tmp_path):
    proc = _import_in_subprocess(_fake_site(tmp_path, "2.13.0+cpu", "0.28.0", fails=True))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: torch and torchvision do not match"), proc.stderr[-2000:]
    assert "torch 2.13.0+cpu is the 'cpu' build" in last
    assert 'pip install --force-reinstall "torch==2.13.0" "torchvision==0.28.*"' in last
    assert "--index-url https://download.pytorch.org/whl/cpu" in last
    assert "operator torchvision::nms does not exist" in last  # the original error is kept


def test_a_working_import_is_left_alone(tmp_path):
    # even a pair the rule distrusts imports normally when it works
    proc = _import_in_subprocess(_fake_site(tmp_path, "2.13.0+cpu", "0.28.0", fails=False))
    assert proc.returncode == 0 and "imported True" in proc.stdout, proc.stderr[-2000:]
