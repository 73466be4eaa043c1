"""The training workflow: a run config + an output folder -> checkpoints, a split file and a test report.

Used by ``mtunet train``, the Train widget, the demo, the experiments (``mtunet experiment``, one fold per
run: they pass the loaded dataset and the fold's split) and the studies::

    outcome = drive(iter_train(run, "runs/busi"), callbacks=[printer])

What it guarantees, whoever calls it:

- the output folder is locked for the run (a second run into the same
  folder is refused while the first is alive; a crashed run's lock is free);
- a new run never writes into a folder that already holds checkpoints;
- a resumed run continues the *same* run: its data, split, preprocessing,
  classes and model must match the checkpoint's, or it is refused with the
  differences named; only the settings in :data:`RESUME_MAY_CHANGE` may
  differ (e.g. more epochs);
- ``splits.json`` (the data package's split format) records which images
  trained, validated and tested; ``test_report.json`` the held-out metrics.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..config import RunConfig
from ..events import CancelToken, Status, TrainEvent
from ..torchrun import is_main_process

SPLITS_NAME = "splits.json"
TEST_REPORT_NAME = "test_report.json"
LOCK_NAME = ".mtunet-run.lock"

#: Settings a resumed run may change (dotted ``part.field`` names of the run config).
RESUME_MAY_CHANGE = frozenset({
    "train.epochs", "train.device", "train.early_stopping_patience", "train.amp",
    "data.num_workers", "data.cache", "data.strict", "model.encoder_weights",
})


class RunFolderError(RuntimeError):
    """The output folder cannot hold this run (in use, not empty, not a folder); the message says why."""


@dataclass
class TrainOutcome:
    run: RunConfig
    out_dir: Path
    fit: Any  # training.FitResult
    split_file: Path
    test_report: Any = None  # training.EvaluationReport | None

    @property
    def best_checkpoint(self) -> Path | None:
        return self.fit.best_checkpoint

    @property
    def reason(self) -> str:
        return self.fit.reason


class RunFolder:
    """An output folder held for one run: created if needed, locked while the run lives."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir)
        self._lock = None
        self.created = False

    def __enter__(self) -> RunFolder:
        from filelock import FileLock, Timeout

        from ..outputs import claim_output_dir

        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path}: exists and is not a folder; choose another output folder")
        if not is_main_process():
            self.path.mkdir(parents=True, exist_ok=True)
            return self  # under torchrun, rank 0 holds the folder for the whole run
        self.created = not self.path.exists()
        try:  # marked as napari-mtunet's outputs (never read as data) when it is new or empty
            claim_output_dir(self.path, "training run")
        except OSError as exc:
            raise RunFolderError(f"{self.path}: cannot create the output folder ({exc.strerror or exc})") from None
        self._lock = FileLock(str(self.path / LOCK_NAME), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunFolderError(
                f"{self.path}: another napari-mtunet run is writing to this folder right now; "
                "wait for it to finish or choose another output folder"
            ) from None
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()
        if exc_type is not None and self.created and not self.checkpoints():
            self._remove()  # a run that failed before its first checkpoint leaves nothing behind

    def _remove(self) -> None:
        from ..outputs import MARKER

        for name in (LOCK_NAME, SPLITS_NAME, MARKER):
            try:
                (self.path / name).unlink(missing_ok=True)
            except OSError:
                pass
        try:
            self.path.rmdir()  # only if nothing else is in it
        except OSError:
            pass

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in self.path.glob("*.safetensors") if not p.name.startswith("."))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resume_differences(stored: RunConfig, requested: RunConfig) -> list[str]:
    """Settings where ``requested`` differs from the checkpoint's run (beyond :data:`RESUME_MAY_CHANGE`)."""
    a = _flatten(stored.resolved().to_dict())
    b = _flatten(requested.resolved().to_dict())
    a.pop("version", None)
    b.pop("version", None)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUME_MAY_CHANGE or any(key.startswith(m + ".") for m in RESUME_MAY_CHANGE):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: checkpoint {a.get(key)!r}, now {b.get(key)!r}")
    return diffs


def _resume_run(resume: Path, requested: RunConfig, dataset_classes: list[str]) -> RunConfig:
    from ..checkpoint import load_checkpoint

    _, info = load_checkpoint(resume, device="cpu")
    stored = info.run
    if list(stored.model.class_names) != list(dataset_classes) and len(dataset_classes) >= 2:
        raise RunFolderError(
            f"{resume}: cannot resume: the checkpoint's classes are {stored.model.class_names} but the dataset's "
            f"are {dataset_classes} (a class would be mapped to the wrong index)"
        )
    wanted = requested.with_classes(list(stored.model.class_names))
    diffs = resume_differences(stored, wanted)
    if diffs:
        raise RunFolderError(
            f"{resume}: cannot resume with other settings than the run it continues ("
            + "; ".join(diffs[:6]) + (f"; +{len(diffs) - 6} more" if len(diffs) > 6 else "")
            + "). Use the original settings, or start a new run in another folder."
        )
    # The stored run, with the changes a resume may make.
    d = stored.to_dict()
    new = wanted.to_dict()
    for key in RESUME_MAY_CHANGE:
        part, name = key.split(".")
        d[part][name] = new[part][name]
    return RunConfig.from_dict(d)


def check_can_start(run: RunConfig, out_dir: str | os.PathLike, *, resume: str | os.PathLike | None = None,
                    data_root: str | os.PathLike | None = None) -> None:
    """What fails at once, checked before the dataset is read or the run folder made: the output place
    (never among the data: :mod:`napari_mtunet.outputs`) and the encoder's pretrained weights (offline, the
    hub copy fails within seconds, naming the alternatives)."""
    from ..outputs import check_output_dir

    root = data_root if data_root is not None else run.data.root
    if root:
        check_output_dir(out_dir, [root], what="output folder of the run")
    weights = run.model.encoder_weights
    if resume is None and weights == "imagenet":
        from ..encoders import imagenet_weights_file

        imagenet_weights_file(run.model.encoder_name)  # packaged, cached or downloaded now; else a clear error
    elif resume is None and weights and not Path(str(weights)).is_file():
        from ..encoders import EncoderWeightsError

        raise EncoderWeightsError(f"encoder weights file not found: {weights}")


def iter_train(
    run: RunConfig,
    out_dir: str | os.PathLike,
    *,
    resume: str | os.PathLike | None = None,
    cancel: CancelToken | None = None,
    n_boot: int = 1000,
    evaluate_test: bool = True,
    store: dict | None = None,
    extra_training_metadata: dict[str, Any] | None = None,
    loaded: Any = None,
    split: Any = None,
) -> Iterator[TrainEvent]:
    """Train ``run`` into ``out_dir`` (a generator of events; returns a :class:`TrainOutcome`).

    ``resume``: a ``last.safetensors`` of an earlier run in ``out_dir``.  ``loaded``: the dataset, already
    loaded (default: loaded from ``run.data``); ``split``: the split to train with (default: made from
    ``run.data``, or the run folder's ``splits.json`` when resuming) -- experiments pass their folds.
    """
    from ..data import load_splits, save_splits
    from ..device import empty_cache, resolve_device
    from ..paths import write_atomic
    from ..training import Trainer
    from .data import load, prepare

    resolve_device(run.train.device)  # a clear error before any data is read
    check_can_start(run, out_dir, resume=resume, data_root=getattr(loaded, "root", None))  # before any file is written
    with RunFolder(out_dir) as folder:
        out = folder.path
        is_main = is_main_process()
        resume_path = Path(resume) if resume is not None else None
        if is_main and resume_path is None and folder.checkpoints():
            raise RunFolderError(
                f"{out} already holds checkpoints ({', '.join(p.name for p in folder.checkpoints()[:3])}); "
                f"choose another output folder, or resume with {out / 'last.safetensors'}"
            )
        if resume_path is not None and not resume_path.is_file():
            raise RunFolderError(f"{resume_path}: no such checkpoint to resume from")
        if loaded is None:
            yield Status(f"Loading the dataset from {run.data.root} …")
            loaded = load(run.data)
        if resume_path is not None:
            run = _resume_run(resume_path, run, loaded.class_names)
            split_file = out / SPLITS_NAME
            if split is None and split_file.is_file():
                split = load_splits(split_file)[0]
                try:
                    split.select(loaded.samples, loaded.root, strict=True)
                except Exception as exc:  # SplitError: the dataset changed since the run started
                    raise RunFolderError(f"{split_file}: cannot resume: {exc}") from None
        data = prepare(run, loaded=loaded, split=split, store=store)
        run = data.run
        split_file = out / SPLITS_NAME
        if is_main and resume_path is None:
            save_splits(split_file, data.split, root=loaded.root)
        yield Status(f"{loaded.headline()}; {data.describe()}")
        device = resolve_device(run.train.device)
        try:
            trainer = Trainer(
                None if resume_path is not None else run.model,
                run.train,
                data.train,
                data.val,
                preprocessing=run.preprocessing,
                out_dir=out,
                cancel=cancel,
                resume_from=resume_path,
                data_config=run.data,
                num_workers=run.data.num_workers,
                run=run,
                extra_training_metadata=extra_training_metadata,
            )
            yield from trainer.iter_fit()
            fit = trainer.result
            report = None
            finished = fit.best_checkpoint is not None and fit.reason != "cancelled"
            postprocessing = run.postprocessing
            if is_main and finished and data.val is not None:
                from .calibrate import calibrate_checkpoint

                yield Status(f"Choosing the post-processing on the {len(data.val)} validation images …")
                cal, postprocessing = calibrate_checkpoint(fit.best_checkpoint, data.val, device)
                if cal is not None:
                    run = run.replace(postprocessing=postprocessing)
                    yield Status(cal.describe())
            if is_main and evaluate_test and data.test is not None and finished:
                from ..checkpoint import load_checkpoint
                from ..training import evaluate_model

                yield Status(f"Evaluating the best checkpoint on the {len(data.test)} held-out test images …")
                model, _ = load_checkpoint(fit.best_checkpoint, device=device)
                report = evaluate_model(model, data.test, split="test", device=device, n_boot=n_boot,
                                        postprocessing=postprocessing)
                write_atomic(out / TEST_REPORT_NAME, json.dumps(report.to_dict(), indent=1))
                yield Status(report.format())
        finally:
            empty_cache(device)
    return TrainOutcome(run=run, out_dir=out, fit=fit, split_file=split_file, test_report=report)
