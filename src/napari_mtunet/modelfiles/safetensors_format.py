"""The safetensors container, parsed and checked by hand from one open handle.

A safetensors file is an 8-byte little-endian header length, a JSON header
(tensor name -> dtype, shape, byte offsets; ``__metadata__`` -> strings) and
the tensor bytes.  :func:`read_header` checks everything the header claims
(bounded sizes, known dtypes, offsets inside the data, no overlaps, a total
number of values) before anything is allocated; :func:`read_tensors` then
reads each tensor's bytes from the **same** handle straight into its own
tensor.  Both work on a regular file and on a zip member stream, so a file
is opened once and a package member is never extracted to disk first.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

#: safetensors dtypes and their sizes in bytes.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
#: At most this many tensor values in one file (4 GiB of float32; real UNets hold 2-40 M).
MAX_PARAMETERS = 1_000_000_000
MAX_HEADER_BYTES = 100 * 1024 * 1024
_CHUNK = 1 << 20


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as the safetensors header declares it (nothing loaded)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int = 0
    end: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    """A checked safetensors header: its string metadata, its tensors, where the data starts and ends."""

    strings: dict[str, str]
    specs: dict[str, TensorSpec]
    data_start: int  # 8 + header length

    @property
    def data_end(self) -> int:
        """Where the last declared tensor ends (bytes from the start of the file)."""
        return self.data_start + max((s.end for s in self.specs.values()), default=0)


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left > 0:
        chunk = fh.read(min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def header_length(head: bytes, size: int, where: str) -> int:
    """The header length from the first 8 bytes, checked against the file size."""
    n = int.from_bytes(head[:8], "little")
    if len(head) < 8 or n <= 1 or n > min(size - 8, MAX_HEADER_BYTES):
        raise CheckpointError(f"{where}: not a napari-mtunet checkpoint: its header is not a safetensors "
                              "header (corrupt, truncated or another format)")
    return n


def read_header(fh: BinaryIO, size: int, where: str, *, head: bytes | None = None) -> Header:
    """Read and check the header from ``fh`` (positioned at the start, or after ``head``, its first 8 bytes).

    ``size``: the size of the file (for a zip member: the size its entry
    declares).  Never reads tensor data.
    """
    try:
        head = head if head is not None else _read_exact(fh, 8)
        n = header_length(head, size, where)
        raw = _read_exact(fh, n)
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if len(raw) < n:
        raise CheckpointError(f"{where}: the file is truncated (its header is cut off)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where}: cannot read safetensors header (not valid JSON: {type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: cannot read safetensors header (not a JSON object)")
    strings = header.pop("__metadata__", None) or {}
    if not isinstance(strings, dict) or not all(isinstance(v, str) for v in strings.values()):
        raise CheckpointError(f"{where}: cannot read safetensors header (__metadata__ must map names to strings)")
    data_len = size - 8 - n
    specs: dict[str, TensorSpec] = {}
    spans = []
    total = 0
    for name, entry in header.items():
        shown = name[:100]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: cannot read safetensors header (tensor {shown!r} is malformed)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{where}: cannot read safetensors header (tensor {shown!r} has unknown dtype "
                                  f"{str(dtype)[:20]!r})")
        if not (isinstance(shape, list) and len(shape) <= 8 and all(type(d) is int and 0 <= d < 2**40 for d in shape)):
            raise CheckpointError(f"{where}: cannot read safetensors header (tensor {shown!r} has an invalid shape)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise CheckpointError(f"{where}: cannot read safetensors header (tensor {shown!r} has invalid offsets)")
        begin, end = offsets
        spec = TensorSpec(name, dtype, tuple(shape), begin, end)
        if not 0 <= begin <= end <= data_len or end - begin != spec.numel * DTYPE_SIZES[dtype]:
            raise CheckpointError(
                f"{where}: tensor {shown!r} lies outside the file or its size does not match its shape "
                "(the file is truncated or corrupt)"
            )
        total += spec.numel
        spans.append((begin, end, shown))
        specs[name] = spec
    spans.sort()
    for (_b0, e0, a), (b1, _e1, b) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{where}: tensors {a!r} and {b!r} overlap in the file (corrupt or crafted)")
    if total > MAX_PARAMETERS:
        raise CheckpointError(
            f"{where}: the file declares {total:,} tensor values, more than any real model "
            f"(limit {MAX_PARAMETERS:,}); refused"
        )
    return Header(strings, specs, 8 + n)


def torch_dtype(dtype: str) -> torch.dtype:
    import torch

    return {
        "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2, "U16": torch.uint16, "I16": torch.int16, "F16": torch.float16,
        "BF16": torch.bfloat16, "U32": torch.uint32, "I32": torch.int32, "F32": torch.float32,
        "U64": torch.uint64, "I64": torch.int64, "F64": torch.float64,
    }[dtype]


def read_tensors(fh: BinaryIO, header: Header, where: str, *, position: int | None = None) -> dict[str, Any]:
    """Read every tensor the header declares from ``fh``, in file order, each into its own CPU tensor.

    ``position``: where ``fh`` stands now (bytes from the start of the file);
    ``None`` = right after the header.  Gaps between tensors are skipped by
    reading forward, so a non-seekable stream (a zip member) works; nothing
    beyond the last declared tensor is read.
    """
    import sys

    import torch

    if sys.byteorder != "little":  # safetensors stores little-endian bytes; torch's big-endian builds are rare
        raise CheckpointError(f"{where}: reading checkpoints needs a little-endian machine")
    pos = header.data_start if position is None else int(position)
    out: dict[str, torch.Tensor] = {}
    for spec in sorted(header.specs.values(), key=lambda s: (s.begin, s.end)):
        start = header.data_start + spec.begin
        if start < pos:  # zero-sized tensors may share an offset
            if spec.numel == 0:
                out[spec.name] = torch.empty(spec.shape, dtype=torch_dtype(spec.dtype))
                continue
            raise CheckpointError(f"{where}: tensor {spec.name[:100]!r} overlaps another (corrupt or crafted)")
        skip = start - pos
        while skip > 0:
            chunk = fh.read(min(skip, _CHUNK))
            if not chunk:
                raise CheckpointError(f"{where}: the file is truncated (tensor {spec.name[:100]!r} is missing)")
            skip -= len(chunk)
        pos = start
        t = torch.empty(spec.shape, dtype=torch_dtype(spec.dtype))
        nbytes = spec.end - spec.begin
        if nbytes:
            view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
            done = 0
            try:
                while done < nbytes:
                    got = fh.readinto(view[done:])
                    if not got:
                        break
                    done += got
            except OSError as exc:
                raise CheckpointError(f"{where}: cannot read tensor {spec.name[:100]!r} ({exc.strerror or exc})") from None
            if done < nbytes:
                raise CheckpointError(
                    f"{where}: the file is truncated (tensor {spec.name[:100]!r}: {done} of {nbytes} bytes)"
                )
            pos += nbytes
        out[spec.name] = t
    return out
