"""Torch ``Dataset`` over :class:`Sample` records and the ``DataLoader`` factory.

Decoding (PNG/TIFF/...) and resizing happen once per sample when the cache is
on: the cache holds ``uint8`` (or ``float16`` for >8-bit sources) tensors at
the training size; random augmentation runs after the cache, every epoch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler, default_collate
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from napari_mtunet.config import GUIDANCE_CHANNELS, AugmentConfig, InteractiveConfig, Preprocessing
from napari_mtunet.preprocess import to_float_rgb

from .errors import DataError
from .io import load_sample
from .samples import Sample
from .transforms import JointTransform


def _image_to_tensor(image: np.ndarray, where: str) -> torch.Tensor:
    """Native image -> (3, H, W) tensor: uint8 kept as uint8 (grey replicated, alpha dropped),
    anything else through :func:`to_float_rgb` (float32)."""
    if image.dtype == np.uint8 and (image.ndim == 2 or image.shape[-1] in (3, 4)):
        arr = image if image.ndim == 3 else image[..., None]
        arr = arr[..., :3]
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:
            arr = arr.copy()
        t = torch.from_numpy(arr).permute(2, 0, 1)
        return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t.contiguous()
    return torch.from_numpy(to_float_rgb(image, where=where)).permute(2, 0, 1).contiguous()


@contextmanager
def single_threaded():
    """Run small per-sample tensor ops on one intra-op thread.

    Per-image transforms are far too small to benefit from OpenMP; on a busy
    CPU the thread hand-off made them ~10x slower (measured: 24 ms vs 2 ms per
    256 px sample on 2 cores).  The previous setting is restored afterwards.
    """
    prev = torch.get_num_threads()
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class SampleDataset(Dataset):
    """Items: ``dict(image=float32 (3,S,S), mask=float32 (1,S,S), label=int64, has_mask=bool,
    has_label=bool, index=int)``; ``label`` is -1 and ``mask`` zeros when absent."""

    def __init__(
        self,
        samples: Sequence[Sample],
        class_names: Sequence[str],
        preprocessing: Preprocessing | None = None,
        augment: AugmentConfig | None = None,
        train: bool = False,
        cache: bool = True,
        source_size: int | None = None,
    ) -> None:
        """``source_size``: decode and cache each image at up to this longer side, keeping its aspect ratio
        (the prompted views of interactive training crop from it), instead of at the training size."""
        self.samples = list(samples)
        self.class_names = [str(c) for c in class_names]
        self._index = {c: i for i, c in enumerate(self.class_names)}
        for s in self.samples:
            if s.label is not None and s.label not in self._index:
                raise DataError(f"class {s.label!r} is not one of {self.class_names}", s.id, kind="unknown_class")
        self.preprocessing = preprocessing or Preprocessing()
        self.transform = JointTransform(self.preprocessing, augment, train)
        self.source_size = None if source_size is None else int(source_size)
        self._view_augment = _geometric_augmentation(augment) if (train and source_size) else None
        self.cache_enabled = bool(cache)
        self._cache: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * len(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [self._index[s.label] if s.label is not None else -1 for s in self.samples]

    def _decode(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.samples[i]
        image, mask = load_sample(s)
        return self._to_tensors(image, mask, s)

    def _to_tensors(self, image: np.ndarray, mask: np.ndarray | None, s: Sample):
        img = _image_to_tensor(image, s.id)
        m = None if mask is None else torch.from_numpy(mask)[None]
        if self.source_size is not None:
            h, w = img.shape[-2:]
            scale = self.source_size / max(h, w)
            if scale < 1:
                size = [max(1, round(h * scale)), max(1, round(w * scale))]
                img = TF.resize(img, size, antialias=True)
                if m is not None:
                    m = TF.resize(m, size, interpolation=TF.InterpolationMode.NEAREST_EXACT)
        elif self.preprocessing.resize:
            size = [self.preprocessing.image_size] * 2
            if list(img.shape[-2:]) != size:
                img = TF.resize(img, size, antialias=True)
                if m is not None:
                    m = TF.resize(m, size, interpolation=TF.InterpolationMode.NEAREST_EXACT)
        if img.dtype != torch.uint8:
            img = img.to(torch.float16)
        return img, m

    def decoded(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cached (decoded, resized) ``(image (3,S,S) uint8|float16, mask (1,S,S) uint8 | None)``."""
        if not self.cache_enabled:
            with single_threaded():
                return self._decode(i)
        item = self._cache[i]
        if item is None:
            with single_threaded():
                item = self._decode(i)
            self._cache[i] = item
        return item

    def fill_cache(self, num_threads: int | None = None) -> None:
        """Decode every sample now (threads; decoders release the GIL)."""
        if not self.cache_enabled:
            return
        todo = [i for i, c in enumerate(self._cache) if c is None]
        workers = num_threads or min(4, os.cpu_count() or 1)
        if workers <= 1 or len(todo) < 8:
            for i in todo:
                self.decoded(i)
            return
        with single_threaded(), ThreadPoolExecutor(workers) as pool:
            for i, item in zip(todo, pool.map(self._decode, todo)):
                self._cache[i] = item

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Batch fetch (used by ``DataLoader``): one single-thread section per batch, not per item."""
        with single_threaded():
            return [self._item(int(i)) for i in indices]

    def __getitem__(self, i: int) -> dict[str, Any]:
        with single_threaded():
            return self._item(i)

    def prompted_item(self, i: int, rng: np.random.Generator, cfg: InteractiveConfig) -> dict[str, Any]:
        """A prompted training view of sample ``i`` (interactive training): the image augmented at its cached
        size, a simulated user's first prompts (:func:`napari_mtunet.prompts.training_view`), the region the
        Predictor would run for them cropped and resized to the training size, and the guidance channels;
        ``iterations``: how many corrective clicks the trainer adds on the model's own predictions."""
        from napari_mtunet.prompts import encode, training_view

        with single_threaded():
            img, m = self.decoded(i)
            if m is None:  # no mask: nothing to prompt; the automatic view
                item = self._item(i)
                return {**item, "guidance": torch.zeros((len(GUIDANCE_CHANNELS), *item["image"].shape[-2:])),
                        "iterations": 0, "prompted": False}
            if img.dtype == torch.float16:
                img = img.float()
            if self._view_augment is not None:
                img, m = self._view_augment(tv_tensors.Image(img), tv_tensors.Mask(m))
                img, m = img.as_subclass(torch.Tensor), m.as_subclass(torch.Tensor)
            truth = m[0].numpy() > 0
            view = training_view(truth, rng, cfg)
            s = self.preprocessing.image_size
            r0, c0, r1, c1 = view.region
            image = TF.resized_crop(img, r0, c0, r1 - r0, c1 - c0, [s, s], antialias=True)
            if image.dtype == torch.uint8:
                image = image.float().div_(255.0)
            from napari_mtunet.prompts import resize_mask

            mask = torch.from_numpy(resize_mask(truth[r0:r1, c0:c1], (s, s)))[None].float()
            guidance = torch.from_numpy(encode(view.prompts, view.region, (s, s), cfg.click_radius))
            sample = self.samples[i]
            label = self._index[sample.label] if sample.label is not None else -1
            return {
                "image": image.clamp_(0.0, 1.0),
                "mask": mask,
                "label": torch.tensor(label, dtype=torch.int64),
                "has_mask": True,
                "has_label": label >= 0,
                "index": i,
                "guidance": guidance,
                "iterations": int(view.iterations),
                "prompted": True,
            }

    def _item(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        img, m = self.decoded(i)
        if img.dtype == torch.float16:
            img = img.float()
        image, mask = self.transform(img, m)
        has_mask = mask is not None
        if mask is None:
            mask = torch.zeros((1, *image.shape[-2:]), dtype=torch.float32)
        else:
            mask = mask.to(torch.float32)
        label = self._index[s.label] if s.label is not None else -1
        return {
            "image": image,
            "mask": mask,
            "label": torch.tensor(label, dtype=torch.int64),
            "has_mask": has_mask,
            "has_label": label >= 0,
            "index": i,
        }


def _geometric_augmentation(augment: AugmentConfig | None):
    """The training augmentation's geometric part (flips, rotation + shear), applied at the cached size."""
    from torchvision.transforms import v2

    ops: list = []
    if augment is not None and augment.enabled:
        if augment.hflip:
            ops.append(v2.RandomHorizontalFlip(0.5))
        if augment.vflip:
            ops.append(v2.RandomVerticalFlip(0.5))
        if augment.rotation_degrees > 0 or augment.shear_degrees > 0:
            ops.append(v2.RandomAffine(degrees=float(augment.rotation_degrees),
                                       shear=float(augment.shear_degrees) if augment.shear_degrees > 0 else None,
                                       interpolation=v2.InterpolationMode.BILINEAR, fill=0))
    return v2.Compose(ops) if ops else None


class InteractiveDataset(Dataset):
    """Interactive training data: every automatic item of ``data`` (zero guidance) followed by
    ``prompted_per_image`` prompted views per image (:meth:`SampleDataset.prompted_item`), drawn anew at
    every access.  ``data`` is a :class:`SampleDataset` or a ``Subset`` of one."""

    def __init__(self, data: Any, config: InteractiveConfig, seed: int = 0):
        from torch.utils.data import Subset

        if isinstance(data, Subset) and isinstance(data.dataset, SampleDataset):
            self.base, self.indices = data.dataset, [int(i) for i in data.indices]
        elif isinstance(data, SampleDataset):
            self.base, self.indices = data, list(range(len(data)))
        else:
            raise TypeError(f"interactive training needs a SampleDataset (or a Subset of one), got {type(data).__name__}")
        if self.base.source_size is None:
            raise ValueError("interactive training needs images cached at their source size (source_size)")
        self.data = data
        self.config = config
        n = len(self.indices)
        n_views = int(round(n * float(config.prompted_per_image)))
        order = np.random.default_rng(seed).permutation(n) if n else np.arange(0)
        self.view_of = [int(order[j % n]) for j in range(n_views)] if n else []

    def __len__(self) -> int:
        return len(self.indices) + len(self.view_of)

    @property
    def labels(self) -> list[int]:
        base = self.base.labels
        auto = [base[i] for i in self.indices]
        return auto + [auto[j] for j in self.view_of]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[int(i)] for i in indices]

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.indices)
        if i < n:
            item = self.base[self.indices[i]]
            g = torch.zeros((len(GUIDANCE_CHANNELS), *item["image"].shape[-2:]))
            return {**item, "guidance": g, "iterations": 0, "prompted": False}
        # a fresh draw each time (torch's generator is seeded per epoch by the trainer, per worker by torch)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return self.base.prompted_item(self.indices[self.view_of[i - n]], rng, self.config)


class UnlabelledDataset(Dataset):
    """Images without masks or classes (files or arrays, e.g. a new scanner's uncorrected images), resized to the
    training size like :class:`SampleDataset`'s evaluation items; decoded once and cached."""

    def __init__(self, images: Sequence[Any], preprocessing: Preprocessing, names: Sequence[str] | None = None):
        self.images = list(images)
        self.names = list(names) if names is not None else [
            str(im) if isinstance(im, (str, os.PathLike)) else f"image array {i}" for i, im in enumerate(self.images)]
        self.preprocessing = preprocessing
        self.transform = JointTransform(preprocessing, None, False)
        self._cache: list[torch.Tensor | None] = [None] * len(self.images)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> list[int]:
        return [-1] * len(self.images)

    def _decode(self, i: int) -> torch.Tensor:
        from .io import read_image

        item = self.images[i]
        arr = read_image(item) if isinstance(item, (str, os.PathLike)) else np.asarray(item)
        img = _image_to_tensor(arr, self.names[i])
        if self.preprocessing.resize:
            img = TF.resize(img, [self.preprocessing.image_size] * 2, antialias=True)
        return img if img.dtype == torch.uint8 else img.to(torch.float16)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with single_threaded():
            if self._cache[i] is None:
                self._cache[i] = self._decode(i)
            img = self._cache[i]
            image, _ = self.transform(img.float() if img.dtype == torch.float16 else img, None)
        return {"image": image, "mask": torch.zeros((1, *image.shape[-2:])), "label": torch.tensor(-1),
                "has_mask": False, "has_label": False, "index": i}


def collate_batch(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` on one thread (stacking is memory-bound; OpenMP only adds hand-off cost)."""
    with single_threaded():
        return default_collate(batch)


def class_balanced_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-sample weights 1/count(class); unlabelled samples (-1) get the mean weight."""
    lab = np.asarray(labels)
    w = np.zeros(len(lab), dtype=np.float64)
    known = lab >= 0
    if known.any():
        counts = np.bincount(lab[known])
        w[known] = 1.0 / counts[lab[known]]
        w[~known] = w[known].mean()
    else:
        w[:] = 1.0
    return torch.as_tensor(w, dtype=torch.double)


def dataset_labels(data: Any) -> list[int]:
    """Class indices (-1 = none) of a dataset, cheaply when it exposes ``labels``."""
    from torch.utils.data import ConcatDataset, Subset

    ds = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(ds, ConcatDataset):
        return [v for d in ds.datasets for v in dataset_labels(d)]
    if isinstance(ds, Subset):
        inner = dataset_labels(ds.dataset)
        return [inner[i] for i in ds.indices]
    labels = getattr(ds, "labels", None)
    if labels is not None:
        return [int(v) for v in labels]
    return [int(ds[i]["label"]) for i in range(len(ds))]


def _fill_caches(data: Any) -> None:
    """Decode every sample of the SampleDatasets under ``data`` now (shared with forked workers)."""
    from torch.utils.data import ConcatDataset, Subset

    if isinstance(data, ConcatDataset):
        for d in data.datasets:
            _fill_caches(d)
    elif isinstance(data, Subset):
        _fill_caches(data.dataset)
    elif isinstance(data, InteractiveDataset):
        _fill_caches(data.data)
    elif isinstance(data, SampleDataset):
        data.fill_cache()


def make_loader(
    data: Any,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    balanced_sampling: bool = False,
    world_size: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
    drop_last: bool | None = None,
    prefill_cache: bool | None = None,
) -> DataLoader:
    """The one ``DataLoader`` factory (training, validation, evaluation, the data package's API).

    - ``train``: a seeded random order (re-seed per epoch with :func:`set_loader_epoch`),
      a class-balanced :class:`WeightedRandomSampler` with ``balanced_sampling``, or a
      ``DistributedSampler`` under DDP (``world_size > 1``); otherwise sequential;
    - a last training batch of one sample is dropped (it breaks BatchNorm in train mode);
    - with workers, decoded images are cached up front in the main process (shared with
      forked workers) and workers are persistent;
    - batches are collated on one thread (stacking is memory-bound).
    """
    from torch.utils.data import RandomSampler, SequentialSampler

    n = len(data)
    if n == 0:
        raise DataError("cannot make a DataLoader over zero samples")
    gen = torch.Generator().manual_seed(int(seed))
    per_rank = n
    if not train:
        sampler = SequentialSampler(data)
    elif world_size > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed))
        per_rank = -(-n // world_size)
    elif balanced_sampling:
        sampler = WeightedRandomSampler(class_balanced_weights(dataset_labels(data)), num_samples=n,
                                        replacement=True, generator=gen)
    else:
        sampler = RandomSampler(data, generator=gen)
    if drop_last is None:
        drop_last = bool(train) and per_rank > batch_size and per_rank % batch_size == 1
    if prefill_cache is None:
        prefill_cache = num_workers > 0
    if prefill_cache:
        _fill_caches(data)
    return DataLoader(
        data,
        batch_size=int(batch_size),
        sampler=sampler,
        drop_last=drop_last,
        num_workers=int(num_workers),
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=collate_batch,
    )


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make epoch ``epoch``'s order a function of ``(seed, epoch)`` only (so a resumed run repeats it)."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(int(seed) + int(epoch))


def make_dataloader(
    samples: Sequence[Sample] | SampleDataset,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    augment: AugmentConfig | None = None,
    train: bool = True,
    batch_size: int = 32,
    num_workers: int = 0,
    cache: bool = True,
    balanced_sampling: bool = False,
    *,
    seed: int = 0,
    shuffle: bool | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
    prefill_cache: bool | None = None,
) -> DataLoader:
    """A ``DataLoader`` of :class:`SampleDataset` items over ``samples`` (see :func:`make_loader`).

    ``train``: augmentation on and a seeded random order unless ``shuffle=False``;
    ``balanced_sampling``: class-balanced draws with replacement; ``cache``:
    decoded resized images are kept in memory.
    """
    if isinstance(samples, SampleDataset):
        ds = samples
    else:
        if class_names is None:
            raise DataError("make_dataloader needs class_names (the model's class order)")
        ds = SampleDataset(samples, class_names, preprocessing, augment if train else None, train, cache)
    if len(ds) == 0:
        raise DataError("cannot make a DataLoader over zero samples")
    random_order = train if shuffle is None else shuffle
    return make_loader(
        ds,
        batch_size=batch_size,
        train=bool(random_order or balanced_sampling),
        seed=seed,
        num_workers=num_workers,
        balanced_sampling=balanced_sampling,
        pin_memory=pin_memory,
        drop_last=drop_last,
        prefill_cache=(cache and num_workers > 0) if prefill_cache is None else prefill_cache,
    )
