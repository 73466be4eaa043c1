"""File helpers shared by the workflows, the CLI, the exporters and the widgets (no heavy imports).

:func:`atomic_path` is the one way this package writes a file that must
never be seen half-written (checkpoints, split files, reports, masks,
ONNX files, bioimage.io packages): the data go to a hidden temporary file
in the same folder, which is flushed to disk, given the mode the process's
umask allows for a new file (0644 with umask 022, as ``open()`` would give;
``mkstemp`` alone gives 0600, which colleagues on a shared server cannot
read), and renamed over the destination -- or, without ``overwrite``,
linked into place only if nothing is there yet.  :func:`write_atomic` is the
same for bytes or text already in memory.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def unique_path(path: Path) -> Path:
    """``path`` if free, else ``stem-1.ext``, ``stem-2.ext`` ... (never overwrite user files)."""
    path = Path(path)
    if not path.exists():
        return path
    suffix = "".join(path.suffixes) if path.name.count(".") <= 2 else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    for i in range(1, 100000):
        cand = path.with_name(f"{stem}-{i}{suffix}")
        if not cand.exists():
            return cand
    raise FileExistsError(f"{path}: cannot find a free file name")


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # elsewhere the only way to read it is to set it; the lock keeps our own threads from racing on it
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: ``0o666 & ~umask`` (0644 with umask 022)."""
    return 0o666 & ~current_umask()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (the rename that published a file) to disk; a no-op where unsupported."""
    if os.name == "nt":
        return
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _place(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    # a hard link creates `path` only if it does not exist (atomic: a file that appeared meanwhile is
    # never replaced); file systems without hard links fall back to check-then-rename
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path}: already exists; it was not overwritten") from None
    except OSError:
        if path.exists():
            raise FileExistsError(f"{path}: already exists; it was not overwritten") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextmanager
def temporary_sibling(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A new hidden file next to ``path`` (``.NAME.XXXX.tmp`` + ``suffix``) with the umask's mode.

    Same folder, so publishing it is an atomic rename.  Removed when the
    block ends unless it was published (:func:`publish`) meanwhile.  The
    owner may always write it (for umasks that would forbid even that);
    :func:`publish` sets the exact mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=str(path.parent))
    tmp = Path(name)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, new_file_mode() | 0o600)
        finally:
            os.close(fd)
        yield tmp
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def publish(tmp: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Move a finished temporary file into place: fsync, the umask's mode, rename (or no-clobber link).

    Without ``overwrite`` an existing ``path`` is left alone and
    :class:`FileExistsError` is raised (``tmp`` is then still there for the
    caller's cleanup).
    """
    tmp, path = Path(tmp), Path(path)
    _fsync_file(tmp)
    os.chmod(tmp, stat.S_IMODE(new_file_mode()))  # the writer may have replaced the file we created
    _place(tmp, path, overwrite)
    fsync_dir(path.parent)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file next to ``path`` to write by name; publish it when the block succeeds.

    :func:`temporary_sibling` + :func:`publish`: when the ``with`` block ends
    without an exception the file is flushed, given the umask's mode and
    renamed to ``path`` (without ``overwrite``: linked, and
    :class:`FileExistsError` if ``path`` exists).  On any exception the
    temporary file is removed and ``path`` is unchanged.
    """
    path = Path(path)
    with temporary_sibling(path, suffix) as tmp:
        yield tmp
        publish(tmp, path, overwrite=overwrite)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, encoding: str = "utf-8",
                 overwrite: bool = True) -> Path:
    """Write ``data`` (bytes, or text in ``encoding``) to ``path`` through :func:`atomic_path`.

    A crash or a full disk leaves either the previous file or none, never a
    truncated one that looks complete; the new file has the umask's mode.
    """
    path = Path(path)
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
    return path
