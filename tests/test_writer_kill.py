""""Add to training set" under kill -9: labels.csv is never half-written, no row points at a missing image.

The writer (data/writer.py) rewrites labels.csv to a temp file and
``os.replace``-s it under a lock file.  Here a child process appends samples
in a loop and is killed with SIGKILL (a) while a CSV temp file is half
written (deterministic hang point) and (b) at arbitrary moments of a fast
append loop.  Afterwards the CSV parses, every row names a complete,
readable image (and mask), lenient loading reports nothing worse than an
orphan image, and appending works again.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_mtunet.data import load_dataset, read_image, write_generic_sample

CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import napari_mtunet.data.writer as w

    root, mode = sys.argv[1], sys.argv[2]
    real = w._atomic_write_bytes
    state = {"n": 0}

    def hanging(path, data):
        if mode == "hang_in_csv" and path.name == "labels.csv" and state["n"] == 3:
            import tempfile
            fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
            os.write(fd, data[: len(data) // 2])  # half the new CSV reached the disk
            print("KILL-ME", flush=True)
            time.sleep(600)
        real(path, data)

    w._atomic_write_bytes = hanging
    rng = np.random.default_rng(0)
    for i in range(10_000):
        img = rng.integers(0, 255, (24, 20), dtype=np.uint8)
        mask = (rng.random((24, 20)) > 0.7).astype(np.uint8)
        w.write_generic_sample(root, img, mask, label="a,b \\"quoted\\"" if i % 2 else "benign", group=f"p{i % 3}")
        state["n"] += 1
        print("APPENDED", state["n"], flush=True)
    """
)


def _start(root: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(root), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _kill_when(proc: subprocess.Popen, pred, timeout: float = 180.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if pred(line) or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    return lines


def _check_consistent(root: Path, appended: int) -> list[list[str]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["filename", "label", "group"], rows[0]
    body = rows[1:]
    # every completed append is there, at most one more (killed after os.replace, before printing)
    assert appended <= len(body) <= appended + 1, (appended, len(body))
    for r in body:
        assert len(r) == 3, r
        assert r[1] in ("benign", 'a,b "quoted"'), r  # quoting survived
        img = root / "images" / r[0]
        assert img.is_file() and read_image(img).shape == (24, 20)
        assert read_image(root / "masks" / (Path(r[0]).stem + ".png")).shape == (24, 20)
    rep = load_dataset(root, duplicates=False)
    # The image (+ mask) of the append that was killed may be on disk without its CSV row; the
    # generic layout then keeps it for segmentation only and *reports* it (image_without_label).
    orphans = [p for p in rep.problems if p.kind == "image_without_label"]
    assert len(orphans) <= 1 and len(rep.samples) == len(body) + sum(p.action == "kept" for p in orphans)
    for p in rep.problems:
        assert p.kind in ("image_without_label", "mask_without_image", "empty_file", "too_few_samples"), p
    return body


def test_kill_while_labels_csv_is_half_written(tmp_path):
    root = tmp_path / "ds"
    lines = _kill_when(_start(root, "hang_in_csv"), lambda l: l.startswith("KILL-ME"))
    assert any(l.startswith("KILL-ME") for l in lines), "".join(lines)
    _check_consistent(root, appended=3)
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".labels.csv.") and p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the half-written temp file; never read as the CSV


@pytest.mark.parametrize("kill_after", [5, 12])
def test_kill_at_arbitrary_moments_of_many_appends(tmp_path, kill_after):
    root = tmp_path / "ds"
    lines = _kill_when(_start(root, "free"), lambda l: l.startswith("APPENDED") and int(l.split()[1]) >= kill_after)
    appended = max(int(l.split()[1]) for l in lines if l.startswith("APPENDED"))
    _check_consistent(root, appended)


def test_appending_works_right_after_a_crash_inside_the_lock(tmp_path):
    root = tmp_path / "ds"
    _kill_when(_start(root, "hang_in_csv"), lambda l: l.startswith("KILL-ME"))
    assert (root / "labels.csv.lock").exists()  # the dead writer's lock
    img = np.zeros((24, 20), np.uint8)
    write_generic_sample(root, img, img, label="benign", lock_timeout=3)
    _check_consistent(root, appended=4)
