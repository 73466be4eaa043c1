"""What a file given as a model is: a readable regular file, and not a pickle, a zip or an empty file.

Torch-free, so a GUI thread can check a path before any heavy import.
:func:`open_checkpoint` opens the file **once**; the header and the tensors
are then read from that one handle (:mod:`.safetensors_format`), so a file
replaced by another process meanwhile (a training run saving its
checkpoint) is read whole from one version or the other, never mixed.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
from pathlib import Path
from typing import BinaryIO

from .errors import CheckpointError

SUFFIX = ".safetensors"

_FILE_KINDS = (
    (_stat.S_ISFIFO, "a FIFO (named pipe)"),
    (_stat.S_ISSOCK, "a socket"),
    (_stat.S_ISCHR, "a character device"),
    (_stat.S_ISBLK, "a block device"),
)


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it is a readable regular file; else a :class:`CheckpointError` saying what it is.

    Distinguishes a missing file, a folder, a FIFO/socket/device (never
    opened: reading a FIFO would block), a symbolic link loop, a broken link,
    a NUL byte in the path and a permission problem.  Torch-free.
    """
    try:
        p = Path(path)
    except TypeError:
        raise CheckpointError(f"{path!r}: a checkpoint path must be a string or path, got {type(path).__name__}") from None
    if "\0" in str(p):
        raise CheckpointError(f"{str(p)!r}: the checkpoint path contains a NUL byte; check how it was typed or generated")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise CheckpointError(
                f"{p}: is a broken symbolic link (it points to {os.readlink(p)!r}, which does not exist)"
            ) from None
        raise CheckpointError(f"{p}: no such checkpoint file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(f"{p}: is a symbolic link loop (the link points back to itself); "
                                  "give the real .safetensors file") from None
        if exc.errno == errno.ENOTDIR:
            raise CheckpointError(f"{p}: no such checkpoint file (a part of the path is a file, not a folder)") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CheckpointError(f"{p}: no permission to access the checkpoint") from None
        raise CheckpointError(f"{p}: cannot access the checkpoint ({exc.strerror or exc})") from None
    except ValueError as exc:  # e.g. a path too long for the platform's API
        raise CheckpointError(f"{str(p)!r}: not a usable checkpoint path ({exc})") from None
    if _stat.S_ISDIR(st.st_mode):
        try:
            inside = sorted(q.name for q in p.iterdir() if q.suffix == SUFFIX and not q.name.startswith("."))[:5]
        except OSError:
            inside = []
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise CheckpointError(
            f"{p}: is a folder, not a checkpoint file; give the {SUFFIX} file itself, e.g. a training run's "
            f"best{SUFFIX}{hint}"
        )
    _check_regular(p, st.st_mode)
    if not os.access(p, os.R_OK):
        raise CheckpointError(f"{p}: no permission to read the checkpoint")
    return p


def _check_regular(p: Path, mode: int) -> None:
    if not _stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise CheckpointError(f"{p}: is {kind}, not a regular checkpoint file; it is not read")


def open_checkpoint(path: str | os.PathLike) -> tuple[Path, BinaryIO, int]:
    """Check ``path`` and open it once: ``(path, binary handle, size of the file opened)``.

    The file is opened without blocking (a FIFO swapped in after the check
    is refused, not waited on) and checked again through the handle.
    """
    p = check_checkpoint_path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot open the checkpoint ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        _check_regular(p, st.st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return p, fh, int(st.st_size)


def sniff(head: bytes, size: int) -> str | None:
    """Describe a file that is clearly not safetensors (pickles, zip archives) from its first 8 bytes."""
    if not head:
        return "the file is empty"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return (
            "it is a Python pickle (e.g. torch.save output); pickles can run arbitrary code when "
            "loaded and are refused"
        )
    if head[:2] == b"PK":
        return (
            "it is a zip archive (torch.save format, containing a pickle); pickles can run "
            "arbitrary code when loaded and are refused"
        )
    if len(head) < 8:
        return "the file is truncated (shorter than a safetensors header)"
    return None
