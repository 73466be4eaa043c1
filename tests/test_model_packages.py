"""Opening bioimage.io packages: small files cannot fill the disk, nothing leads out of a package, and every
malformed description or zip entry is one PackageError naming the package and the entry.

Packages are built by hand here (a zip or a folder with ``rdf.yaml`` and the
embedded checkpoint), exactly as the exporter lays them out, so these tests
do not depend on bioimageio.core.
"""

from __future__ import annotations

import json
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_mtunet.checkpoint import CheckpointError, PackageError, load_checkpoint, save_checkpoint
from napari_mtunet.config import ModelConfig, Preprocessing
from napari_mtunet.export import extract_checkpoint, is_bioimageio_package, open_model
from napari_mtunet.inference import Predictor
from napari_mtunet.model import build_model

NAME = "mtunet_checkpoint.safetensors"


def _rdf(name: str = NAME, **changes) -> dict:
    rdf = {"type": "model", "format_version": "0.5.4", "name": "test model",
           "attachments": [{"source": name}], "config": {"napari-mtunet": {"checkpoint": name}}}
    rdf.update(changes)
    return rdf


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, class_names=["benign", "malignant", "normal"]),
                        Preprocessing(image_size=64)).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "model.safetensors", model)


def _zip(path: Path, members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _package(tmp_path: Path, ckpt: Path, *, rdf: dict | bytes | None = None, data: bytes | None = None,
             name: str = "pkg.zip", compression=zipfile.ZIP_DEFLATED) -> Path:
    text = rdf if isinstance(rdf, bytes) else yaml.safe_dump(rdf if rdf is not None else _rdf()).encode()
    return _zip(tmp_path / name, {"rdf.yaml": text, NAME: data if data is not None else ckpt.read_bytes()},
                compression=compression)


def _folder(tmp_path: Path, ckpt: Path, rdf: dict | None = None) -> Path:
    folder = tmp_path / "unpacked"
    folder.mkdir()
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf or _rdf()))
    (folder / NAME).write_bytes(ckpt.read_bytes())
    return folder


def _refused(path: Path, match: str, entry: str | None = None) -> PackageError:
    with pytest.raises(PackageError, match=match) as err:
        open_model(path)
    assert err.value.package == str(path), err.value
    assert str(path) in str(err.value)
    if entry is not None:
        assert err.value.entry == entry and f"entry {entry!r}" in str(err.value), err.value
    return err.value


# --------------------------------------------------------------------------- what works


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_LZMA])
def test_a_package_opens_exactly_as_its_checkpoint(ckpt, tmp_path, compression):
    pkg = _package(tmp_path, ckpt, compression=compression)
    ref_model, ref = load_checkpoint(ckpt)
    model, info = open_model(pkg)
    assert is_bioimageio_package(pkg) and info.path == pkg and info.metadata == ref.metadata
    assert all(torch.equal(a, b) for a, b in zip(ref_model.state_dict().values(), model.state_dict().values()))
    out = extract_checkpoint(pkg, tmp_path)
    assert out.read_bytes() == ckpt.read_bytes()  # byte for byte (what the exporters embed again)


def test_a_package_folder_and_its_rdf_open(ckpt, tmp_path):
    folder = _folder(tmp_path, ckpt)
    for path in (folder, folder / "rdf.yaml"):
        _, info = open_model(path)
        assert info.content_hash == load_checkpoint(ckpt)[1].content_hash
    (tmp_path / "sub").mkdir()
    assert extract_checkpoint(folder, tmp_path / "sub").read_bytes() == ckpt.read_bytes()
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    a, b = Predictor(ckpt).predict(image), Predictor(folder).predict(image)
    assert np.array_equal(a.class_probabilities, b.class_probabilities)


def test_opening_a_zip_package_writes_nothing(ckpt, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    pkg = _package(tmp_path, ckpt)
    open_model(pkg)
    assert list(scratch.iterdir()) == []  # the checkpoint is read from the zip member, not extracted


# --------------------------------------------------------------------------- disk and memory bounds


def _header_bytes(ckpt: Path) -> bytes:
    blob = ckpt.read_bytes()
    return blob[:8 + struct.unpack("<Q", blob[:8])[0]]


def test_a_zip_bomb_is_refused_before_it_is_inflated(ckpt, tmp_path):
    """A real header and 64 MiB of zeros deflate to ~70 KiB: refused by the entry's ratio, at once."""
    bomb = _header_bytes(ckpt) + bytes(64 << 20)
    pkg = _package(tmp_path, ckpt, data=bomb)
    assert pkg.stat().st_size < 2 << 20
    start = time.perf_counter()
    _refused(pkg, "zip bomb", NAME)
    assert time.perf_counter() - start < 5
    with pytest.raises(PackageError, match="zip bomb"):
        extract_checkpoint(pkg, tmp_path)
    assert not (tmp_path / NAME).exists()


def test_zeros_after_a_real_checkpoint_are_refused_from_the_header(ckpt, tmp_path):
    """Below the ratio limit (the real weights do not compress), yet longer than the header says."""
    pkg = _package(tmp_path, ckpt, data=ckpt.read_bytes() + bytes(64 << 20))
    start = time.perf_counter()
    _refused(pkg, "bytes long but its safetensors header describes", NAME)
    assert time.perf_counter() - start < 5


def test_a_member_longer_than_its_header_says_is_refused_before_its_tensors(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    padded = ckpt.read_bytes() + rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()  # incompressible
    pkg = _package(tmp_path, ckpt, data=padded)
    _refused(pkg, "bytes long but its safetensors header describes", NAME)
    with pytest.raises(PackageError, match="header describes"):
        extract_checkpoint(pkg, tmp_path)


def test_a_header_declaring_other_tensors_is_refused_before_they_are_read(ckpt, tmp_path):
    blob = bytearray(ckpt.read_bytes())
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    key = next(k for k in header if k != "__metadata__" and header[k]["shape"])
    header[key]["shape"] = [s * 2 for s in header[key]["shape"]]
    forged = json.dumps(header).encode()
    pkg = _package(tmp_path, ckpt, data=struct.pack("<Q", len(forged)) + forged + bytes(blob[8 + n:]))
    err = _refused(pkg, "embedded checkpoint is not usable", NAME)
    assert "size does not match its shape" in str(err) or "wrong shape" in str(err)


def test_symbolic_links_out_of_a_package_folder_are_refused(ckpt, tmp_path):
    folder = _folder(tmp_path, ckpt)
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(ckpt.read_bytes())
    (folder / NAME).unlink()
    (folder / NAME).symlink_to(outside)
    _refused(folder, "symbolic link to .*outside the package folder", NAME)
    with pytest.raises(PackageError, match="outside the package folder"):
        extract_checkpoint(folder, tmp_path)
    # a link that stays inside the package is fine
    (folder / NAME).unlink()
    (folder / "weights").mkdir()
    (folder / "weights" / "real.safetensors").write_bytes(ckpt.read_bytes())
    (folder / NAME).symlink_to(Path("weights") / "real.safetensors")
    open_model(folder)
    # rdf.yaml itself pointing out of the folder
    other = tmp_path / "other_rdf.yaml"
    other.write_text(yaml.safe_dump(_rdf()))
    (folder / "rdf.yaml").unlink()
    (folder / "rdf.yaml").symlink_to(other)
    _refused(folder, "outside the package folder", "rdf.yaml")


def test_a_sparse_giant_checkpoint_in_a_folder_writes_nothing(ckpt, tmp_path):
    folder = _folder(tmp_path, ckpt)
    with open(folder / NAME, "r+b") as fh:
        fh.truncate(3 << 30)  # 3 GiB, sparse: its header no longer says where its data ends
    out = tmp_path / "out"
    out.mkdir()
    start = time.perf_counter()
    with pytest.raises(PackageError, match="header describes"):
        extract_checkpoint(folder, out)
    with pytest.raises(PackageError, match="header describes"):
        open_model(folder)
    assert time.perf_counter() - start < 10
    assert sum(f.stat().st_size for f in out.iterdir()) == 0


# --------------------------------------------------------------------------- malformed descriptions


MALFORMED_RDF = {
    "deep nesting": (b"a: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply|not valid YAML"),
    "attachments: 5": (yaml.safe_dump(_rdf(attachments=5)).encode(), "'attachments' must be a list of files, got int"),
    "attachments of numbers": (yaml.safe_dump(_rdf(attachments=[1, 2])).encode(), "not among its attachments"),
    "config: 5": (yaml.safe_dump(_rdf(config=5)).encode(), "not one exported by napari-mtunet"),
    "our config a list": (yaml.safe_dump(_rdf(config={"napari-mtunet": [1]})).encode(), "not one exported"),
    "checkpoint a number": (yaml.safe_dump(_rdf(config={"napari-mtunet": {"checkpoint": 5}})).encode(),
                            "not one exported"),
    "checkpoint a path": (yaml.safe_dump(_rdf(config={"napari-mtunet": {"checkpoint": "../x.safetensors"}})).encode(),
                          "must be a .safetensors file name"),
    "type a list": (yaml.safe_dump(_rdf(type=[1])).encode(), "of type '\\[1\\]', not a model"),
    "a list, not a mapping": (b"- 1\n- 2\n", "not a YAML mapping"),
    "not YAML": (b"a: [unclosed\n", "not valid YAML"),
    "a python tag": (b"!!python/object/apply:os.system ['echo owned']\n", "not valid YAML"),
    "not UTF-8": (b"\xff\xfe\x00garbage: \x80\x81\n", "not valid YAML|cannot be read"),
    "huge": (b"a: " + b"x" * (5 << 20) + b"\n", "implausibly large|zip bomb"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_RDF))
def test_a_malformed_rdf_is_one_package_error_naming_package_and_entry(ckpt, tmp_path, case):
    text, match = MALFORMED_RDF[case]
    pkg = _package(tmp_path, ckpt, rdf=text)
    _refused(pkg, match, "rdf.yaml")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "rdf.yaml").write_bytes(text)
    (folder / NAME).write_bytes(ckpt.read_bytes())
    _refused(folder, match, "rdf.yaml")


def test_the_yaml_anchor_bomb_is_cheap(ckpt, tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    rdf = _rdf()
    text = ("\n".join(lines) + "\n" + yaml.safe_dump(rdf)).encode()
    package = _package(tmp_path, ckpt, rdf=text)
    start = time.process_time()  # CPU time: a loaded machine must not fail it, an expanded bomb still would
    open_model(package)  # aliases are shared, never expanded
    assert time.process_time() - start < 10


def _patch_zip(path: Path, name: str, *, flag: int | None = None, method: int | None = None) -> None:
    """Set a member's general-purpose flag bits or compression method in both zip headers."""
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
        local = info.header_offset
    central = blob.rfind(b"PK\x01\x02" + bytes(2), 0)  # locate the member's central entry by name
    central = blob.find(b"PK\x01\x02")
    while central != -1:
        n = struct.unpack("<H", blob[central + 28:central + 30])[0]
        if blob[central + 46:central + 46 + n].decode() == name:
            break
        central = blob.find(b"PK\x01\x02", central + 4)
    for base, flag_at, method_at in ((local, 6, 8), (central, 8, 10)):
        if flag is not None:
            blob[base + flag_at:base + flag_at + 2] = struct.pack("<H", flag)
        if method is not None:
            blob[base + method_at:base + method_at + 2] = struct.pack("<H", method)
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("entry", [NAME, "rdf.yaml"])
def test_an_encrypted_entry_is_named(ckpt, tmp_path, entry):
    pkg = _package(tmp_path, ckpt)
    _patch_zip(pkg, entry, flag=1)
    _refused(pkg, "encrypted", entry)


@pytest.mark.parametrize("entry", [NAME, "rdf.yaml"])
def test_an_unknown_compression_method_is_named(ckpt, tmp_path, entry):
    pkg = _package(tmp_path, ckpt)
    _patch_zip(pkg, entry, method=99)
    _refused(pkg, "compression method 99", entry)


def test_corrupt_or_truncated_zips_are_package_errors(ckpt, tmp_path):
    pkg = _package(tmp_path, ckpt, compression=zipfile.ZIP_STORED)
    with zipfile.ZipFile(pkg) as zf:
        info = zf.getinfo(NAME)
    blob = bytearray(pkg.read_bytes())
    start = info.header_offset + 30 + len(NAME) + len(info.extra)
    blob[start + info.file_size - 10] ^= 0xFF  # in the last tensor: the zip's CRC no longer matches
    pkg.write_bytes(bytes(blob))
    err = _refused(pkg, "Bad CRC|corrupt|content hash", NAME)
    assert "Traceback" not in str(err)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(pkg.read_bytes()[:-200])
    _refused(cut, "not a readable zip archive|corrupt")
    deflated = _package(tmp_path, ckpt, name="deflated.zip")
    with zipfile.ZipFile(deflated) as zf:
        info = zf.getinfo(NAME)
    blob = bytearray(deflated.read_bytes())
    start = info.header_offset + 30 + len(NAME) + len(info.extra)
    blob[start + 100:start + 140] = bytes(40)  # damaged deflate stream
    deflated.write_bytes(bytes(blob))
    _refused(deflated, "corrupt|Bad CRC|invalid|Error", NAME)


def test_a_package_lacking_its_checkpoint_is_named(ckpt, tmp_path):
    pkg = _zip(tmp_path / "empty.zip", {"rdf.yaml": yaml.safe_dump(_rdf()).encode()})
    _refused(pkg, "missing: the package lacks the checkpoint", NAME)
    assert isinstance(_refused(pkg, "lacks"), CheckpointError)  # still a CheckpointError for old callers
