"""Reading a checkpoint: header, metadata, the network it describes checked on the ``meta`` device, then the
tensors -- all from **one** open handle (a file, or a member of a bioimage.io zip package).

Order of checks (each failure is a :class:`CheckpointError` naming the file):
the path is a regular file; the header and metadata are valid (and, for
hash version 2, unmodified); the network the metadata describes is built on
the ``meta`` device (no memory) and must be of a sane size and match every
tensor name, shape and dtype declared in the file -- all before any tensor
is allocated; then the tensors are read, their hash checked, and every
floating-point value must be finite.  Nothing is ever unpickled.

Torch is imported only inside the functions that handle tensors, so
:func:`read_metadata` can run on a GUI thread without importing torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..config import ModelConfig, Preprocessing
from .checkpoint_save import EXTRA_PREFIX, build_metadata
from .errors import CheckpointError
from .hashing import HASH_VERSION, content_hash, metadata_hash_matches
from .safetensors_format import FLOAT_DTYPES, MAX_PARAMETERS, Header, TensorSpec, read_header, read_tensors
from .schema import META_KEY, parse_metadata
from .sniff import open_checkpoint, sniff

if TYPE_CHECKING:
    import torch


@dataclass
class CheckpointInfo:
    """Everything a checkpoint says about its model, validated."""

    path: Path | None
    model_config: ModelConfig
    preprocessing: Preprocessing
    metadata: dict[str, Any]
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.model_config.class_names)

    @property
    def training(self) -> dict[str, Any]:
        return dict(self.metadata.get("training") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.metadata.get("metrics") or {})

    @property
    def postprocessing(self):
        """How outputs become masks (:class:`~napari_mtunet.config.Postprocessing`; the default for older files)."""
        return self.run.postprocessing

    @property
    def run(self):
        """The run configuration (:class:`~napari_mtunet.config.RunConfig`); migrated for format-1 files."""
        from ..config import RunConfig

        return RunConfig.from_metadata(self.metadata)

    @property
    def parent(self) -> str | None:
        return self.metadata.get("parent")

    @property
    def content_hash(self) -> str:
        return str(self.metadata["content_hash"])

    @property
    def short_hash(self) -> str:
        return self.content_hash[:12]

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "<in-memory model>"

    def describe(self) -> str:
        c = self.model_config
        return (
            f"{self.name}: {c.encoder_name} UNet, task={c.task}, classes={c.class_names}, "
            f"input {self.preprocessing.image_size}px, hash {self.short_hash}"
        )


def read_checked(fh: BinaryIO, size: int, where: str, *, verify_hash: bool = True) -> tuple[dict[str, Any], Header]:
    """Header and validated metadata from a handle at the start of a checkpoint of ``size`` bytes."""
    try:
        head = fh.read(8)
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot read the checkpoint ({exc.strerror or exc})") from None
    problem = sniff(head, size)
    if problem:
        raise CheckpointError(f"{where}: not a napari-mtunet checkpoint: {problem}")
    header = read_header(fh, size, where, head=head)
    meta = parse_metadata(header.strings.get(META_KEY), where)
    if verify_hash and meta.get("hash_version") == HASH_VERSION and not metadata_hash_matches(meta):
        raise CheckpointError(
            f"{where}: metadata hash mismatch: the checkpoint's metadata was modified or damaged after it was "
            "saved; use an intact copy of the file (or re-save the model)"
        )
    return meta, header


def read_metadata(path: str | os.PathLike, *, verify_hash: bool = True) -> dict[str, Any]:
    """Read and validate the JSON metadata of a checkpoint without loading tensors (and without torch).

    ``verify_hash``: for files with ``hash_version`` 2, check ``metadata_hash``
    (the metadata was not modified).  The tensors are checked by
    :func:`load_checkpoint`.
    """
    p, fh, size = open_checkpoint(path)
    with fh:
        meta, _header = read_checked(fh, size, str(p), verify_hash=verify_hash)
    return meta


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, verify_hash: bool = True
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """Rebuild the model stored in ``path``; returns ``(model in eval mode, info)``.

    The file is opened once; its header and tensors are read from that one
    handle, so a checkpoint being replaced by another process (a training
    run saving) is read whole, from the version that was opened.
    """
    p, fh, size = open_checkpoint(path)
    with fh:
        return load_from_handle(fh, size, str(p), path=p, device=device, verify_hash=verify_hash)


def load_from_handle(
    fh: BinaryIO, size: int, where: str, *, path: Path | None, device: str | torch.device = "cpu",
    verify_hash: bool = True,
) -> tuple[torch.nn.Module, CheckpointInfo]:
    """:func:`load_checkpoint` on an open handle at the start of a checkpoint (a file or a zip member)."""
    meta, header = read_checked(fh, size, where, verify_hash=verify_hash)
    config, preprocessing = described_model(meta, header, where)
    tensors = read_tensors(fh, header, where)
    return build_checked(tensors, meta, config, preprocessing, where, path=path, device=device, verify_hash=verify_hash)


def described_model(meta: dict[str, Any], header: Header, where: str) -> tuple[ModelConfig, Preprocessing]:
    """The config of the network the metadata describes, checked against the header's tensors (no allocation)."""
    config = ModelConfig.from_dict(meta["model"])
    config.encoder_weights = None  # weights come from the checkpoint, never downloaded again
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    check_architecture(where, config, preprocessing,
                       {k: v for k, v in header.specs.items() if not k.startswith(EXTRA_PREFIX)})
    return config, preprocessing


def build_checked(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], config: ModelConfig, preprocessing: Preprocessing,
    where: str, *, path: Path | None, device: str | torch.device = "cpu", verify_hash: bool = True,
) -> tuple[torch.nn.Module, CheckpointInfo]:
    from ..model import build_model

    if verify_hash and content_hash(tensors) != meta["content_hash"]:
        raise CheckpointError(f"{where}: content hash mismatch: the file is corrupt or was modified")
    check_values(where, tensors, preprocessing)
    extra = {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    try:
        model = build_model(config, preprocessing)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{where}: cannot build the model it describes ({exc})") from None
    model.load_state_dict(state, strict=True)
    model.eval()
    model.to(device)
    info = CheckpointInfo(path=path, model_config=config, preprocessing=preprocessing, metadata=meta, extra_tensors=extra)
    return model, info


def check_architecture(
    where: str | Path, config: ModelConfig, preprocessing: Preprocessing, specs: dict[str, TensorSpec]
) -> None:
    """Build the described network on the ``meta`` device and compare it with the file's declared tensors."""
    import torch

    from ..model import build_model

    try:
        with torch.device("meta"):  # shapes only: nothing is allocated, whatever the metadata says
            skeleton = build_model(config, preprocessing)
        own = {k: (tuple(v.shape), v.dtype.is_floating_point) for k, v in skeleton.state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - unknown encoder names etc.
        raise CheckpointError(f"{where}: cannot build the model it describes ({type(exc).__name__}: {str(exc)[:200]})") from None
    n_params = sum(math.prod(shape) for shape, _ in own.values())
    if n_params > MAX_PARAMETERS:
        raise CheckpointError(
            f"{where}: the metadata describes a network of {n_params:,} values ({4 * n_params / 2**30:.1f} GiB), "
            f"more than any real model (limit {MAX_PARAMETERS:,}); refused before allocating it"
        )
    missing = sorted(set(own) - set(specs))
    unexpected = sorted(set(specs) - set(own))
    shapes = sorted(k for k in set(own) & set(specs) if own[k][0] != specs[k].shape)
    if missing or unexpected or shapes:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} tensor(s) e.g. {missing[:3]}")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} tensor(s) e.g. {[u[:100] for u in unexpected[:3]]}")
        if shapes:
            k = shapes[0]
            detail.append(
                f"{len(shapes)} tensor(s) of the wrong shape e.g. {k}: file {specs[k].shape} vs model {own[k][0]}"
            )
        raise CheckpointError(f"{where}: weights do not fit the model in its metadata: " + "; ".join(detail))
    for k in sorted(own):
        wants_float = own[k][1]
        if wants_float != (specs[k].dtype in FLOAT_DTYPES):
            need = "floating-point numbers" if wants_float else "integers"
            raise CheckpointError(
                f"{where}: tensor {k!r} is stored as {specs[k].dtype} but the model needs {need}; "
                "the file was damaged or not written by napari-mtunet"
            )


def check_values(where: str | Path, tensors: dict[str, torch.Tensor], preprocessing: Preprocessing) -> None:
    """Every floating-point tensor finite; the normalisation buffers equal the metadata's mean/std."""
    import torch

    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype.is_floating_point and t.numel():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                n_bad = int((~finite).sum())
                raise CheckpointError(
                    f"{where}: tensor {name!r} holds {n_bad} NaN/infinite value(s); the weights are unusable "
                    "(training diverged, or the file is damaged). Use an earlier checkpoint (e.g. "
                    "best.safetensors) or retrain"
                )
    if preprocessing.mean is not None:
        for key, values in (("mean", preprocessing.mean), ("std", preprocessing.std)):
            t = tensors.get(key)
            if t is None:
                continue
            want = torch.tensor(values, dtype=torch.float64)
            if t.numel() != len(values) or not torch.allclose(t.double().reshape(-1), want, rtol=1e-5, atol=1e-6):
                raise CheckpointError(
                    f"{where}: the network's normalisation {key} {t.reshape(-1).tolist()[:3]} differs from the "
                    f"metadata's preprocessing.{key} {list(values)}; the file was damaged or edited"
                )


def info_for_model(model: torch.nn.Module) -> CheckpointInfo:
    """A CheckpointInfo describing an in-memory model (hash computed from its weights)."""
    module = getattr(model, "module", model)
    tensors = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    meta = build_metadata(module, tensors)
    return CheckpointInfo(path=None, model_config=module.config, preprocessing=module.preprocessing, metadata=meta)
