"""CSV safety and the training-set writer: names a spreadsheet would run as formulas are neutralised, rows never lost.

- class names / labels / groups that a spreadsheet would run as formulas
  (``=``, ``+``, ``-``, ``@``, tab, CR) are escaped in ``labels.csv`` and read
  back unchanged by the dataset loader; ``\\r``/``\\n`` inside a field never
  makes a phantom row (:mod:`napari_mtunet.csvsafe`, the one helper for
  every CSV the package writes); line breaks in a label are refused;
- ``labels.csv`` that is unreadable, not UTF-8 or has the wrong header is
  refused *before* the image and mask are written (no orphans); a write
  failure removes what the call wrote;
- the lock is an OS lock (``filelock``): a live writer's lock is never broken
  however old its file looks, and a writer killed with SIGKILL never blocks
  the next one.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_mtunet.data import DataError, load_dataset
from napari_mtunet.data.writer import write_generic_sample

IMG = np.arange(24 * 20, dtype=np.uint8).reshape(24, 20)
MASK = (IMG % 7 == 0).astype(np.uint8)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for d in ("images", "masks") if (root / d).is_dir()
                  for p in (root / d).iterdir())


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


# --------------------------------------------------------------------------- item 7: CSV safety


FORMULAS = ["=cmd|' /C calc'!A0", "+41", "-1", "@SUM(A1:A9)", "=HYPERLINK(\"http://x\")"]


def test_formula_like_labels_are_escaped_and_read_back_unchanged(tmp_path):
    root = tmp_path / "ds"
    for i, label in enumerate(FORMULAS + ["benign"]):
        write_generic_sample(root, IMG + i, MASK, label, group="=1+1" if i % 2 else "p0")
    rows = _rows(root / "labels.csv")
    assert rows[0] == ["filename", "label", "group"] and len(rows) == 1 + len(FORMULAS) + 1
    for row, label in zip(rows[1:], FORMULAS + ["benign"]):
        assert row[1] == ("'" + label if label[0] in "=+-@" else label), row  # a spreadsheet shows text
        assert not row[2].startswith("="), row
    rep = load_dataset(root, duplicates=False, min_per_class=1)
    assert sorted(s.label for s in rep.samples) == sorted(FORMULAS + ["benign"])
    assert {s.group for s in rep.samples} == {"=1+1", "p0"}


@pytest.mark.parametrize("field,value", [("label", "benign\rmalignant,x"), ("label", "a\nb"), ("label", "x\0"),
                                         ("label", " benign"), ("group", "p\r1"), ("label", "\t")])
def test_multi_line_or_padded_labels_are_refused_before_writing(tmp_path, field, value):
    root = tmp_path / "ds"
    write_generic_sample(root, IMG, MASK, "benign")
    before = ((root / "labels.csv").read_bytes(), _files(root))
    kwargs = {"label": "benign", "group": None, field: value}
    with pytest.raises(DataError, match=f"invalid {'class label' if field == 'label' else 'group'}"):
        write_generic_sample(root, IMG + 1, MASK, **kwargs)
    assert ((root / "labels.csv").read_bytes(), _files(root)) == before


def test_csvsafe_fields_never_split_a_row():
    from napari_mtunet.csvsafe import format_row, format_rows, safe_cell, unescape_cell

    nasty = ["a\rb", "c\nd", "e\r\nf", 'quote "q", comma', "=1+2", "\t=x", "-0.5", "ok", "é ✓"]
    text = format_rows([["file", "label"]] + [[f"img {i}\n.png", v] for i, v in enumerate(nasty)])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 1 + len(nasty)
    assert [unescape_cell(r[1]) for r in rows[1:]] == nasty
    assert [r[0] for r in rows[1:]] == [f"img {i}\n.png" for i in range(len(nasty))]
    # numbers stay numbers (a negative probability-like value is data, not a formula)
    assert safe_cell(-0.25) == -0.25 and safe_cell(np.float32(-1.5)) == np.float32(-1.5) and safe_cell(3) == 3
    assert safe_cell(None) == "" and safe_cell(True) == "True"
    assert format_row(["@x", 1.5]) == "'@x,1.5\r\n"
    # the spreadsheet-significant first character of every text cell is never a formula character
    for r in rows[1:]:
        assert not r[1].startswith(("=", "+", "-", "@", "\t", "\r"))


# --------------------------------------------------------------------------- item 8: validate first


def _bad_csv(kind: str, path: Path) -> None:
    if kind == "latin1":
        path.write_bytes("filename,label\nimg_\xe9.png,b\xe9nin\n".encode("latin-1"))
    elif kind == "wrong_header":
        path.write_text("name,class\nx.png,a\n")
    elif kind == "folder":
        path.mkdir()
    elif kind == "unreadable":
        path.write_text("filename,label\n")
        path.chmod(0)


@pytest.mark.parametrize("kind", ["latin1", "wrong_header", "folder", "unreadable"])
def test_bad_labels_csv_is_refused_before_any_file_is_written(tmp_path, kind):
    root = tmp_path / "ds"
    root.mkdir()
    csv_path = root / "labels.csv"
    _bad_csv(kind, csv_path)
    if kind == "unreadable" and os.access(csv_path, os.R_OK):
        pytest.skip("running as root: permissions do not apply")  # covered by the other kinds
    try:
        with pytest.raises(DataError, match="labels.csv") as err:
            write_generic_sample(root, IMG, MASK, "benign")
        assert "nothing was written" in str(err.value)
        assert _files(root) == []  # no orphan image or mask
    finally:
        if kind == "unreadable":
            csv_path.chmod(0o644)


def test_a_failed_csv_write_removes_the_files_of_the_call(tmp_path, monkeypatch):
    import napari_mtunet.data.writer as w

    root = tmp_path / "ds"
    write_generic_sample(root, IMG, MASK, "benign")
    before = ((root / "labels.csv").read_bytes(), _files(root))
    real = w._atomic_write_bytes

    def disk_full_on_csv(path, data):
        if path.name == "labels.csv":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(w, "_atomic_write_bytes", disk_full_on_csv)
    with pytest.raises(DataError, match="disk full"):
        write_generic_sample(root, IMG + 1, MASK, "malignant")
    assert ((root / "labels.csv").read_bytes(), _files(root)) == before


# --------------------------------------------------------------------------- item 8: the lock

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from napari_mtunet.data.writer import file_lock
    with file_lock(Path(sys.argv[1]), timeout=5):
        print("LOCKED", flush=True)
        time.sleep(120)
    """
)


def test_a_live_writers_lock_is_never_broken_and_a_dead_ones_never_blocks(tmp_path):
    root = tmp_path / "ds"
    write_generic_sample(root, IMG, MASK, "benign")
    lock = root / "labels.csv.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        old = time.time() - 3600
        os.utime(lock, (old, old))  # looks an hour old: the hand-made lock broke anything > 60 s
        before = ((root / "labels.csv").read_bytes(), _files(root))
        with pytest.raises(DataError, match="another program is adding samples") as err:
            write_generic_sample(root, IMG + 1, MASK, "malignant", lock_timeout=1.5)
        assert err.value.kind == "locked"
        assert lock.exists() and holder.poll() is None  # still held by the live writer
        assert ((root / "labels.csv").read_bytes(), _files(root)) == before
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        t0 = time.monotonic()
        write_generic_sample(root, IMG + 2, MASK, "malignant", lock_timeout=5)
        assert time.monotonic() - t0 < 3  # the kernel released the dead writer's lock
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)
        holder.stdout.close()
    assert [r[1] for r in _rows(root / "labels.csv")[1:]] == ["benign", "malignant"]
