"""The two hashes of a checkpoint: ``content_hash`` (the tensors) and ``metadata_hash`` (the metadata).

``content_hash`` is a SHA-256 of the tensors (names, dtypes, shapes, bytes);
parents are recorded by it.  Since ``hash_version`` 2, ``metadata_hash`` is a
SHA-256 of the canonical JSON of all other metadata, ``content_hash``
included, so it covers the metadata *and* the tensors.  Neither is a
signature: they detect damage and edits, not a forger who recomputes them.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: 1 (or absent): ``content_hash`` covers the tensors only; 2: ``metadata_hash`` covers the metadata too.
HASH_VERSION = 2


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes (order-independent)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def metadata_hash(meta: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every metadata field except ``metadata_hash`` itself."""
    body = {k: v for k, v in meta.items() if k != "metadata_hash"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(b"napari-mtunet-metadata\0" + blob.encode("ascii")).hexdigest()


def seal(meta_json: str) -> str:
    """Add ``hash_version`` and ``metadata_hash`` to serialised metadata (hashed as a reader will parse it)."""
    meta = json.loads(meta_json)
    meta["hash_version"] = HASH_VERSION
    meta["metadata_hash"] = metadata_hash(meta)
    return json.dumps(meta, allow_nan=False)


def metadata_hash_matches(meta: dict[str, Any]) -> bool:
    """Whether a ``hash_version`` 2 document's ``metadata_hash`` is the hash of the rest of it."""
    try:
        expected = metadata_hash(meta)
    except ValueError:  # NaN/Infinity literals cannot be canonicalised: not what save_checkpoint wrote
        return False
    return expected == meta.get("metadata_hash")
