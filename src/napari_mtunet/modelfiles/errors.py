"""The errors of reading and writing model files; each message names the file and the problem."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A model file (checkpoint, ONNX graph, bioimage.io package) cannot be read or written."""


class CheckpointError(ModelFileError):
    """A checkpoint cannot be written or read; the message names the file and the reason."""


class PackageError(CheckpointError):
    """A bioimage.io package cannot be opened; the message names the package and the entry inside it."""

    def __init__(self, package: object, problem: str, entry: str | None = None):
        self.package = str(package)
        self.entry = entry
        where = f"{package}: entry {entry!r}" if entry else f"{package}"
        super().__init__(f"{where}: {problem}")


class OnnxModelError(ModelFileError):
    """An ONNX graph cannot be trusted or run; the message names the file and the mismatch."""
