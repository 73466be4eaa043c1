"""The fine-tuning workflow: a trained checkpoint + a few corrected samples -> a child checkpoint, with evidence.

Used by ``mtunet finetune``, the Annotate widget and the fine-tuning study,
all with the one set of defaults in :class:`~napari_mtunet.config.FinetuneConfig`::

    outcome = drive(iter_finetune("best.safetensors", "my_corrections/", "ft/"))
    outcome.child, outcome.metrics["check"]["before"]["dice"], ...

Recipe (chosen with the fine-tuning study, docs/results.md):

- a fixed number of optimisation steps that scales with the number of new
  samples (``steps_per_sample``, clamped), cosine-decayed learning rate;
- each batch mixes the new samples with *replayed* samples of the base
  model's own training split (``replay_ratio`` replayed per new sample)
  when that dataset is reachable, against forgetting;
- the corrections are augmented; BatchNorm statistics stay the base model's
  (``freeze_bn``), so a handful of images cannot shift them;
- a part of the new samples is held back (``check_fraction``) and, with
  part of the base model's held-out split, scored before and after, so the
  user sees whether fine-tuning helped and what it cost.

The child checkpoint records its parent (content hash and file name) and the
fine-tuning settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..config import DataConfig, FinetuneConfig, RunConfig
from ..events import CancelToken, Status, TrainEvent


class FinetuneError(ValueError):
    """Fine-tuning cannot start with these inputs; the message says why."""


@dataclass
class FinetuneOutcome:
    parent: Path
    child: Path | None
    fit: Any
    n_new: int
    n_train: int
    n_check: int
    n_replay_pool: int
    steps: int
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def summary(self) -> str:
        parts = []
        for name, where in (("train", "on the corrected images trained on"), ("check", "on held-back corrections"),
                            ("base", "on the base model's held-out images")):
            m = self.metrics.get(name)
            if not m:
                continue
            vals = []
            for key, label in (("dice_pooled", "Dice (pooled pixels)"), ("accuracy", "accuracy")):
                if key in m["before"] and key in m["after"]:
                    vals.append(f"{label} {m['before'][key]:.3f} → {m['after'][key]:.3f}")
            if vals:
                parts.append(f"{where} (n={int(m['after']['n'])}): " + ", ".join(vals))
        verdict = self.verdict()
        return "; ".join(parts) + (f". {verdict}" if verdict else "")

    def verdict(self) -> str:
        """Whether fine-tuning helped on the held-back corrections, said with its uncertainty: the paired
        per-image Dice change (child - base) with a 95% t-interval; "too few to tell" when they are too few."""
        m = self.metrics.get("check")
        if not self.n_check or not m:
            return ("No corrections were held back, so whether fine-tuning helped on this scanner cannot be "
                    "told (give 4 or more corrections to hold some back)")
        d = paired_change(m["before"].get("dice_per_image"), m["after"].get("dice_per_image"))
        if d is None:
            return ""
        mean, lo, hi, n = d
        ci = f"Dice change on the {n} held-back correction(s) {mean:+.3f}"
        if n < 3 or not np.isfinite(lo):
            return f"{ci}: too few held-back corrections to tell whether it helped"
        ci += f" [95% CI {lo:+.3f}, {hi:+.3f}]"
        if lo > 0:
            return f"{ci}: it helped"
        if hi < 0:
            return f"{ci}: it made things worse; keep the base model"
        return f"{ci}: no clear change"


def paired_change(before: Any, after: Any) -> tuple[float, float, float, int] | None:
    """Mean of ``after - before`` (per image) with a 95% t-interval (NaN bounds for fewer than 2 images)."""
    if before is None or after is None or len(before) != len(after) or not len(before):
        return None
    from scipy import stats

    d = np.asarray(after, float) - np.asarray(before, float)
    n = len(d)
    if n < 2:
        return float(d.mean()), float("nan"), float("nan"), n
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half), n


def scores(model: Any, dataset: Any, device: Any, postprocessing: Any = None) -> dict[str, Any]:
    """Per-image Dice (mean, pooled and per image: for paired before/after changes) and class accuracy of
    ``model`` on ``dataset`` (items with masks / labels): :class:`~napari_mtunet.training.evaluate.ImageScores`."""
    from ..training.evaluate import score_images

    scored = score_images(model, dataset, device=device, postprocessing=postprocessing)
    out: dict[str, Any] = scored.summary()
    if "dice" in out:
        out["dice_per_image"] = [float(v) for v in scored.dice[scored.has_mask]]
    return out


def _check_split(n: int, labels: list[int], k: int, seed: int) -> tuple[list[int], list[int]]:
    """Hold back ``k`` of ``n`` samples, spread over the classes (seeded)."""
    if k <= 0:
        return list(range(n)), []
    from ..data.splits import round_robin_pick

    held = round_robin_pick(labels, k, np.random.default_rng(seed))
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


def _replay_source(run: RunConfig, replay: str | os.PathLike | None, class_names: list[str]):
    """(LoadedData, training indices, held-out indices) of the base run's data, or None when unreachable."""
    from .data import load, make_split, split_indices

    cfg = run.data if replay is None else DataConfig(root=str(replay))
    if not cfg.root or not Path(cfg.root).is_dir():
        return None
    try:
        loaded = load(cfg.replace(strict=False, split_file=None), class_names=class_names)
    except Exception:  # noqa: BLE001 - replay is optional; fine-tuning goes on without it
        return None
    if replay is not None:
        return loaded, np.arange(len(loaded.samples)), np.arange(0)
    try:
        idx = split_indices(loaded, make_split(loaded, cfg.replace(split_file=None)))
    except Exception:  # noqa: BLE001
        return loaded, np.arange(len(loaded.samples)), np.arange(0)
    held = np.concatenate([idx["test"], idx["val"]]) if len(idx["test"]) or len(idx["val"]) else np.arange(0)
    return loaded, idx["train"], held


def _unlabelled_items(unlabelled: Any) -> list[Any] | None:
    """The uncorrected images: files (folders expanded, masks and output folders skipped) and arrays, in
    order; None when there are none.  Raises a :class:`FinetuneError` naming a folder without images or a
    missing path (before anything is loaded)."""
    if unlabelled is None:
        return None
    items = [unlabelled] if isinstance(unlabelled, (str, os.PathLike)) or hasattr(unlabelled, "ndim") \
        else list(unlabelled)
    out: list[Any] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            from .predict import expand_inputs

            try:
                out.extend(expand_inputs([item]))
            except ValueError as exc:
                raise FinetuneError(f"uncorrected images: {exc}") from None
        else:
            arr = np.asarray(item)
            if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
                raise FinetuneError(f"uncorrected images: expected 2-D images, got an array of shape {arr.shape}")
            out.append(arr)
    return out or None


def _describe_unlabelled(unlabelled: Any, items: list[Any], name: str | None) -> str:
    if name:
        return name
    given = [unlabelled] if isinstance(unlabelled, (str, os.PathLike)) or hasattr(unlabelled, "ndim") \
        else list(unlabelled)
    paths = [str(Path(p)) for p in given if isinstance(p, (str, os.PathLike))]
    n_arrays = sum(1 for i in items if not isinstance(i, (str, os.PathLike, Path)))
    return ", ".join(paths + ([f"{n_arrays} image array(s)"] if n_arrays else []))


def _adapt_batchnorm(model: Any, new_domain: list[Any], old_domain: Any, device: Any, seed: int) -> int:
    """Re-estimate every BatchNorm layer's statistics on the new images (and ``old_domain``, if given):
    a cumulative average over all of them, in automatic mode.  Returns the number of images used."""
    import torch
    from torch.utils.data import ConcatDataset, DataLoader

    from ..data.dataset import collate_batch
    from ..training.validation import recalibrate_batchnorm

    parts = [d for d in new_domain if d is not None and len(d)] + ([old_domain] if old_domain is not None else [])
    data = ConcatDataset(parts)
    n = len(data)
    if n < 2:
        return 0
    gen = torch.Generator().manual_seed(int(seed))
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=gen, collate_fn=collate_batch)
    model.to(device)
    with torch.no_grad():
        recalibrate_batchnorm(model, loader, device, max_batches=len(loader))
    model.eval()
    return n


def _adapted_only(model: Any, trainer: Any, path: Path) -> Any:
    """Save ``model`` (adapted, not trained) as the child, as the trainer would have saved it."""
    from ..checkpoint import save_checkpoint
    from ..training.engine import FitResult

    trainer.history = []
    trainer.train_loader = trainer.train_data
    trainer.val_loader = None
    meta = trainer.training_metadata(0)
    meta["n_train"] = 0
    save_checkpoint(path, model, training=meta, parent=trainer.parent, run=trainer.run_dict())
    return FitResult(reason="completed", epochs_run=0, best_epoch=0, best_value=float("nan"), monitor="none",
                     best_checkpoint=path, last_checkpoint=None, history=[], model=model)


def iter_finetune(
    checkpoint: str | os.PathLike,
    dataset: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: FinetuneConfig | None = None,
    replay: str | os.PathLike | None = None,
    cancel: CancelToken | None = None,
    layout: str = "auto",
    unlabelled: str | os.PathLike | Sequence[Any] | None = None,
    unlabelled_name: str | None = None,
) -> Iterator[TrainEvent]:
    """Fine-tune ``checkpoint`` on the samples in ``dataset`` (a generator of events; returns a :class:`FinetuneOutcome`).

    ``replay``: a dataset folder to replay (default: the base model's own
    training data, when its folder is reachable).  ``unlabelled``: uncorrected
    images of the same scanner (a folder or files, or arrays such as napari
    layers, named by ``unlabelled_name``): no labels are needed; with
    ``config.adapt_bn`` they set the BatchNorm statistics.
    """
    import torch
    from torch.utils.data import ConcatDataset, DataLoader, WeightedRandomSampler

    from ..checkpoint import load_checkpoint
    from ..data.dataset import collate_batch, dataset_labels
    from ..device import empty_cache, resolve_device
    from ..outputs import check_output_dir
    from ..training import Trainer
    from ..training.finetune import parent_record
    from .data import load
    from .train import RunFolder, RunFolderError

    cfg = config or FinetuneConfig()
    device = resolve_device(cfg.device)
    checkpoint = Path(checkpoint)
    unl_paths = [unlabelled] if isinstance(unlabelled, (str, os.PathLike)) else [
        p for p in (unlabelled or ()) if isinstance(p, (str, os.PathLike))]
    check_output_dir(out_dir, [p for p in (dataset, replay) if p] + unl_paths, what="output folder of the fine-tuning")
    unl_items = _unlabelled_items(unlabelled)
    if unl_items and cfg.bn_mode(True) == "keep":
        raise FinetuneError("uncorrected images adapt the BatchNorm statistics, which adapt_bn 'keep' leaves as "
                            "they are: use adapt_bn 'auto', 'new' or 'mix', or leave the uncorrected images out")
    with RunFolder(out_dir) as folder:
        if folder.checkpoints():
            raise RunFolderError(f"{folder.path} already holds checkpoints; choose another output folder")
        yield Status(f"Loading {checkpoint.name} and the new samples from {dataset} …")
        model, info = load_checkpoint(checkpoint, device="cpu")
        run = info.run
        names = list(info.class_names)
        new = load(DataConfig(root=str(dataset), layout=layout), class_names=names)
        unknown = [p for p in new.problems if p.kind == "unknown_class"]
        if unknown and model.classification_head is not None:
            raise FinetuneError(
                f"{dataset}: {len(unknown)} sample(s) have a class the model {info.name} does not know "
                f"(first: {unknown[0].file}: {unknown[0].message}); the class must be one of {names}. "
                "Fix the label in labels.csv (or remove the sample) and try again."
            )
        pre = info.preprocessing
        augment = run.data.augment.replace(enabled=bool(cfg.augment))
        labels = new.labels
        n_new = len(new.samples)
        train_idx, check_idx = _check_split(n_new, labels, cfg.n_check(n_new), cfg.seed)
        store: dict = {}
        new_train = new.dataset(train_idx, pre, augment=augment, store=store)
        new_check = new.dataset(check_idx, pre, store=store) if check_idx else None
        new_train_plain = new.dataset(train_idx, pre, store=store)
        replay_src = _replay_source(run, replay, names) if cfg.replay_ratio > 0 else None
        if cfg.replay_ratio > 0 and replay_src is None:
            yield Status("No replay: the base model's training data is not reachable here (pass a replay folder "
                         "to guard against forgetting)")
        parts = [new_train]
        weights = [np.full(len(train_idx), 1.0 / max(1, len(train_idx)))]
        base_check = None
        n_pool = 0
        if replay_src is not None:
            rl, pool, held = replay_src
            n_pool = len(pool)
            if n_pool:
                parts.append(rl.dataset(pool, pre, augment=augment, store={}))
                weights.append(np.full(n_pool, float(cfg.replay_ratio) / n_pool))
            if len(held) and cfg.base_check_images:
                rng = np.random.default_rng(cfg.seed)
                pick = np.sort(rng.choice(held, size=min(len(held), int(cfg.base_check_images)), replace=False))
                base_check = rl.dataset(pick, pre)
        mix = ConcatDataset(parts) if len(parts) > 1 else parts[0]
        steps = cfg.steps_for(len(train_idx))
        gen = torch.Generator().manual_seed(int(cfg.seed))
        if steps:
            sampler = WeightedRandomSampler(torch.as_tensor(np.concatenate(weights), dtype=torch.double),
                                            num_samples=steps * int(cfg.batch_size), replacement=True, generator=gen)
            loader = DataLoader(mix, batch_size=int(cfg.batch_size), sampler=sampler, drop_last=True,
                                collate_fn=collate_batch)
        else:  # adapt only: nothing is drawn
            loader = DataLoader(mix, batch_size=int(cfg.batch_size), collate_fn=collate_batch)
        checks = {"train": new_train_plain, "check": new_check, "base": base_check}
        yield Status(f"Scoring {info.name} before fine-tuning …")
        pp = info.postprocessing  # the child inherits its parent's post-processing
        before = {k: scores(model, ds, device, pp) for k, ds in checks.items() if ds is not None and len(ds)}
        unl = unl_source = None
        if unl_items:
            from ..data.dataset import UnlabelledDataset

            unl = UnlabelledDataset(unl_items, pre)
            unl_source = _describe_unlabelled(unlabelled, unl_items, unlabelled_name)
        bn_mode = cfg.bn_mode(unl is not None)
        adapted = {"source": unl_source, "n_unlabelled": len(unl) if unl is not None else 0,
                   "n_corrections": n_new, "adapt_bn": bn_mode}
        if bn_mode != "keep":
            new_domain = [new_train_plain] + ([unl] if unl is not None else [])
            old_domain = None
            if bn_mode == "mix" and replay_src is not None and len(replay_src[1]):
                n_new_domain = sum(len(d) for d in new_domain)
                rng = np.random.default_rng(cfg.seed + 1)
                pool = replay_src[1]
                pick = rng.choice(pool, size=min(len(pool), n_new_domain), replace=False)
                old_domain = replay_src[0].dataset(np.sort(pick), pre, store={})
            n_images = _adapt_batchnorm(model, new_domain, old_domain, device, cfg.seed)
            adapted["bn_images"] = n_images
            yield Status(f"BatchNorm statistics re-estimated on {n_images} images"
                         + (" (new scanner and replayed base images, half each)" if old_domain is not None
                            else " of the new scanner"))
        train_cfg = run.train.replace(
            epochs=1, batch_size=int(cfg.batch_size), lr=float(cfg.lr), encoder_lr_scale=float(cfg.encoder_lr_scale),
            lr_schedule="cosine", warmup_epochs=0.0, early_stopping_patience=None, monitor="train_loss",
            bn_recalibration_batches=0 if cfg.freeze_bn else run.train.bn_recalibration_batches,
            seed=int(cfg.seed), device=cfg.device,
        )
        ft_run = RunConfig(model=run.model, preprocessing=run.preprocessing,
                           data=run.data.replace(root=str(Path(dataset).resolve()), layout=layout), train=train_cfg,
                           postprocessing=run.postprocessing, interactive=run.interactive)
        if steps:
            yield Status(f"Fine-tuning on {len(train_idx)} new sample(s)"
                         + (f" + replay of {n_pool} base sample(s)" if n_pool else "")
                         + f", {steps} steps" + (f"; {len(check_idx)} held back to check" if check_idx else ""))
        else:
            yield Status("No optimisation step (steps_per_sample 0): the child is the base model with the new "
                         "BatchNorm statistics")
        trainer = Trainer(
            model, train_cfg, loader, None, out_dir=folder.path, cancel=cancel, parent=parent_record(info),
            freeze_bn=cfg.freeze_bn, run=ft_run, train_labels=dataset_labels(mix),
            extra_training_metadata={"finetune": {
                "config": cfg.to_dict(), "parent_path": str(info.path), "parent_hash": info.content_hash,
                "n_new": n_new, "n_train": len(train_idx), "n_check": len(check_idx), "n_replay_pool": n_pool,
                "steps": steps, "adapted_to": adapted,
            }},
        )
        try:
            if steps:
                yield from trainer.iter_fit()
                fit = trainer.result
            else:  # adapt only: the adapted statistics are the child; no optimisation step
                from ..training.checkpointing import BEST_NAME

                fit = _adapted_only(model, trainer, folder.path / BEST_NAME)
            metrics: dict[str, dict[str, dict[str, float]]] = {}
            if fit.best_checkpoint is not None and fit.reason != "cancelled":
                yield Status("Scoring the fine-tuned model …")
                child, _ = load_checkpoint(fit.best_checkpoint, device="cpu")
                for k, ds in checks.items():
                    if k in before:
                        metrics[k] = {"before": before[k], "after": scores(child, ds, device, pp)}
        finally:
            empty_cache(device)
        outcome = FinetuneOutcome(parent=checkpoint, child=fit.best_checkpoint, fit=fit, n_new=n_new,
                                  n_train=len(train_idx), n_check=len(check_idx), n_replay_pool=n_pool, steps=steps,
                                  metrics=metrics)
        if metrics:
            yield Status(outcome.summary())
    return outcome
