"""The ``mtunet`` command line.

    mtunet info DATASET
    mtunet train DATASET --encoder mobilenet_v2 --task both --epochs 50 --out runs/busi
    mtunet evaluate CKPT DATASET [--split test|val|train|all]
    mtunet predict CKPT INPUT... --out DIR
    mtunet demo [--out DIR]
    mtunet experiment DATASET --preset paper --out DIR [--epochs --image-size --max-samples --folds --encoders]
    global option: mtunet --threads N COMMAND ...
    mtunet fetch-weights ENCODER --out FILE

Distributed training: ``torchrun --nproc_per_node=N -m napari_mtunet.cli train ...``.
Errors print one line (``mtunet: error: ...``) and exit with status 1
(set ``MTUNET_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .paths import unique_path

EXIT_ERROR = 1
EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error: printed as one line."""


# --------------------------------------------------------------------------- helpers


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _say(*args: Any) -> None:
    if _rank() == 0:
        print(*args, flush=True)


class ProgressPrinter:
    """Training events -> a tqdm progress bar per epoch and one summary line per epoch."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and _rank() == 0
        self.bar = None

    def __call__(self, ev) -> None:
        if not self.enabled:
            return
        if ev.kind == "batch_end":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=ev.n_batches, desc=f"epoch {ev.epoch}/{ev.epochs}", leave=False, file=sys.stderr)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{ev.loss:.4f}")
        elif ev.kind == "epoch_end":
            self._close()
            vals = {**ev.train, **ev.val}
            shown = " ".join(f"{k}={v:.4f}" for k, v in vals.items())
            star = " *" if ev.improved else ""
            print(f"epoch {ev.epoch}/{ev.epochs} {shown} lr={ev.lr:.2e} ({ev.elapsed_s:.0f}s){star}", flush=True)
        elif ev.kind == "finish":
            self._close()
            print(
                f"finished ({ev.reason}) after {ev.epochs_run} epoch(s); best {ev.monitor}="
                f"{ev.best_value:.4f} at epoch {ev.best_epoch}",
                flush=True,
            )
            if ev.best_checkpoint:
                print(f"best checkpoint: {ev.best_checkpoint}", flush=True)
        elif ev.kind == "error":
            self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _model_config(args, class_names: list[str]):
    from .config import ModelConfig

    return ModelConfig(
        encoder_name=args.encoder,
        encoder_weights=None if args.encoder_weights in (None, "none", "None", "") else args.encoder_weights,
        num_classes=max(2, len(class_names)),
        task=args.task,
        skip_connections=not args.no_skip,
        class_names=class_names if len(class_names) >= 2 else [],
    )


def _train_config(args):
    from .config import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        w_seg=args.w_seg,
        w_cls=args.w_cls,
        seg_loss=args.seg_loss,
        class_weights=None if args.no_class_weights else "balanced",
        early_stopping_patience=None if args.patience <= 0 else args.patience,
        monitor=args.monitor,
        lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule,
        grad_clip=args.grad_clip,
        seed=args.seed,
        device=args.device,
    )


def _data_config(args, root: str):
    from .config import AugmentConfig, DataConfig

    return DataConfig(
        root=str(Path(root).resolve()),
        layout=args.layout,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        n_folds=args.folds,
        fold=args.fold,
        seed=args.seed,
        max_samples=args.max_samples,
        num_workers=args.workers,
        augment=AugmentConfig(enabled=not args.no_augment),
    )


# --------------------------------------------------------------------------- commands


def cmd_info(args) -> int:
    from .training.data_bridge import load_data

    loaded = load_data(args.dataset, args.layout, strict=args.strict)
    print(loaded.summary())
    return 0


def cmd_train(args) -> int:
    from .config import Preprocessing
    from .training import Trainer, evaluate_model
    from .training.data_bridge import load_data, make_dataset, train_val_test

    dcfg = _data_config(args, args.dataset)
    loaded = load_data(args.dataset, args.layout, strict=args.strict, max_samples=args.max_samples, seed=args.seed)
    splits = train_val_test(loaded, dcfg)
    pre = Preprocessing(image_size=args.image_size)
    aug = dcfg.augment
    train_ds = make_dataset(loaded, splits["train"], pre.image_size, augment=aug)
    val_ds = make_dataset(loaded, splits["val"], pre.image_size) if len(splits["val"]) else None
    test_ds = make_dataset(loaded, splits["test"], pre.image_size) if len(splits["test"]) else None
    out = Path(args.out)
    if _rank() == 0:
        if out.exists() and any(out.glob("*.safetensors")) and not args.resume:
            raise CLIError(f"{out} already holds checkpoints; choose another --out or pass --resume {out}/last.safetensors")
        out.mkdir(parents=True, exist_ok=True)
        (out / "splits.json").write_text(
            json.dumps({k: [loaded.key(loaded.samples[i]) for i in v] for k, v in splits.items()}, indent=1)
        )
    _say(loaded.headline())
    _say(f"split: train {len(train_ds)}, val {len(val_ds or [])}, test {len(test_ds or [])}")
    tcfg = _train_config(args)
    trainer = Trainer(
        None if args.resume else _model_config(args, loaded.class_names),
        tcfg,
        train_ds,
        val_ds,
        preprocessing=pre,
        out_dir=out,
        callbacks=[ProgressPrinter(not args.quiet)],
        resume_from=args.resume,
        data_config=dcfg,
        num_workers=args.workers,
    )
    res = trainer.fit()
    if _rank() != 0:
        return 0
    if test_ds is not None and res.best_checkpoint is not None:
        from .checkpoint import load_checkpoint

        model, _ = load_checkpoint(res.best_checkpoint)
        report = evaluate_model(model, test_ds, split="test", device=trainer.device, n_boot=args.n_boot)
        print(report.format())
        (out / "test_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    print(f"outputs in {out.resolve()}")
    return 0 if res.reason != "cancelled" else EXIT_ERROR


def cmd_finetune(args) -> int:
    from .checkpoint import read_metadata
    from .config import AugmentConfig, DataConfig, TrainConfig
    from .training import finetune
    from .training.data_bridge import load_data, make_dataset, train_val_test

    meta = read_metadata(args.checkpoint)
    class_names = list(meta["class_names"])
    size = int(meta["preprocessing"]["image_size"])
    loaded = load_data(args.dataset, args.layout, class_names=class_names)
    loaded.class_names = class_names
    dcfg = DataConfig(root=str(loaded.root), layout=args.layout, val_fraction=args.val_fraction, test_fraction=0.0,
                      seed=args.seed, augment=AugmentConfig(enabled=not args.no_augment))
    splits = train_val_test(loaded, dcfg) if args.val_fraction > 0 else {"train": None, "val": []}
    train_ds = make_dataset(loaded, splits["train"], size, augment=dcfg.augment)
    val_ds = make_dataset(loaded, splits["val"], size) if len(splits["val"]) else None
    replay = None
    if args.replay:
        rl = load_data(args.replay, "auto", class_names=class_names)
        rl.class_names = class_names
        replay = make_dataset(rl, None, size, augment=dcfg.augment)
    stored = (meta.get("training") or {}).get("train_config")
    tcfg = TrainConfig.from_dict(stored) if stored else TrainConfig()
    tcfg.epochs, tcfg.lr, tcfg.device, tcfg.seed = args.epochs, args.lr, args.device, args.seed
    tcfg.batch_size = args.batch_size
    tcfg.early_stopping_patience = None if args.patience <= 0 else args.patience
    if val_ds is None:
        tcfg.monitor = "train_loss"
    out = Path(args.out)
    if out.exists() and any(out.glob("*.safetensors")):
        raise CLIError(f"{out} already holds checkpoints; choose another --out")
    res = finetune(args.checkpoint, train_ds, val_ds, train_config=tcfg, out_dir=out,
                   freeze_encoder=args.freeze_encoder, replay=replay, replay_size=args.replay_size,
                   callbacks=[ProgressPrinter(not args.quiet)], data_config=dcfg)
    print(f"fine-tuned checkpoint: {res.best_checkpoint} (parent {Path(args.checkpoint).name})")
    return 0


def cmd_evaluate(args) -> int:
    from .checkpoint import load_checkpoint
    from .config import DataConfig
    from .training import evaluate_model
    from .training.data_bridge import load_data, make_dataset, train_val_test

    model, info = load_checkpoint(args.checkpoint)
    loaded = load_data(args.dataset, args.layout)
    unknown = sorted({s.label for s in loaded.samples if s.label} - set(info.class_names))
    if unknown and model.classification_head is not None:
        raise CLIError(f"dataset classes {unknown} are unknown to the model (classes {info.class_names})")
    loaded.class_names = list(info.class_names)
    split = args.split
    stored = info.training.get("data_config")
    same_data = bool(stored) and Path(stored.get("root", "")).resolve() == loaded.root.resolve()
    if split == "auto":
        split = "test" if same_data else "all"
    if split == "all":
        idx = None
    else:
        if not stored:
            raise CLIError(f"{args.checkpoint} records no data split; use --split all")
        dcfg = DataConfig.from_dict(stored)
        if dcfg.split_file and not Path(dcfg.split_file).is_file():
            # A checkpoint must never decide where evaluation writes: re-derive the split
            # (same seed, same grouping) in memory instead of saving it at a recorded path.
            dcfg.split_file = None
        if dcfg.max_samples:
            loaded = load_data(args.dataset, args.layout, max_samples=dcfg.max_samples, seed=dcfg.seed)
            loaded.class_names = list(info.class_names)
        idx = train_val_test(loaded, dcfg)[split]
    ds = make_dataset(loaded, idx, info.preprocessing.image_size)
    print(f"{info.describe()}")
    report = evaluate_model(model, ds, split=split, device=args.device, threshold=args.threshold, n_boot=args.n_boot)
    print(report.format())
    if args.json:
        path = unique_path(Path(args.json))
        path.write_text(json.dumps(report.to_dict(), indent=1))
        print(f"report written to {path}")
    return 0


def _expand_inputs(inputs: Sequence[str]) -> list[Path]:
    from .data.io import is_image_file

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and is_image_file(q) and "_mask" not in q.stem)
            if not found:
                raise CLIError(f"{p}: no image files in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise CLIError(f"{p}: no such file or folder")
    return files


def cmd_predict(args) -> int:
    import numpy as np

    from .inference import Predictor, read_image_file

    files = _expand_inputs(args.inputs)
    predictor = Predictor(args.checkpoint, device=args.device, threshold=args.threshold, mode=args.mode)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = unique_path(out / "predictions.csv")
    names = predictor.class_names
    rows = []
    ext = ".tif" if args.format == "tiff" else ".png"
    for f in files:
        image = read_image_file(f)
        pred = predictor.predict(image)
        if isinstance(pred, list):
            raise CLIError(f"{f}: a stack of images; predict its slices one by one")
        mask_file = ""
        if pred.mask is not None:
            target = unique_path(out / f"{f.stem}_mask{ext}")
            arr = (pred.mask > 0).astype(np.uint8) * 255
            if ext == ".tif":
                import tifffile

                tifffile.imwrite(target, arr, compression="zlib")
            else:
                from PIL import Image

                Image.fromarray(arr).save(target)
            mask_file = target.name
        row = {"image": str(f), "mask_file": mask_file}
        if pred.class_probabilities is not None:
            row["class"] = pred.class_name
            row.update({f"p_{n}": f"{p:.6f}" for n, p in zip(names, pred.class_probabilities)})
        if pred.mask is not None:
            row["lesion_fraction"] = f"{float((pred.mask > 0).mean()):.6f}"
        rows.append(row)
        _say(f"{f.name}: " + (f"class {pred.class_name} " if pred.class_name else "") + (f"mask -> {mask_file}" if mask_file else ""))
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(csv_path, "x", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} prediction(s) written to {out.resolve()} ({csv_path.name})")
    return 0


def cmd_demo(args) -> int:
    from .training.demo import run_demo

    run_demo(out=args.out, n=args.n, size=args.size, epochs=args.epochs, device=args.device, seed=args.seed)
    return 0


def cmd_experiment(args) -> int:
    from .experiments import ExperimentSettings, run_experiment

    settings = ExperimentSettings(
        dataset=str(args.dataset),
        layout=args.layout,
        preset=args.preset,
        encoders=[e.strip() for e in args.encoders.split(",") if e.strip()],
        studies=[s.strip() for s in args.studies.split(",") if s.strip()],
        folds=args.folds,
        epochs=args.epochs,
        image_size=args.image_size,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        encoder_weights=None if args.encoder_weights in (None, "none", "None", "") else args.encoder_weights,
        device=args.device,
        seed=args.seed,
        n_boot=args.n_boot,
        augment=not args.no_augment,
    )
    report = run_experiment(settings, Path(args.out), log=_say)
    _say(f"report: {report}")
    return 0


def cmd_fetch_weights(args) -> int:
    from safetensors.torch import save_file

    from .config import ModelConfig
    from .model import EncoderWeightsError, MultiTaskUNet, imagenet_weights_file, load_encoder_weights

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CLIError(f"{out}: the output file must end in .safetensors")
    if out.exists():
        raise CLIError(f"{out} already exists; not overwriting it")
    try:
        path = imagenet_weights_file(args.encoder)
    except EncoderWeightsError as exc:
        raise CLIError(str(exc)) from None
    from safetensors.torch import load_file

    model = MultiTaskUNet(ModelConfig(encoder_name=args.encoder, encoder_weights=None, task="seg"))
    load_encoder_weights(model.encoder, load_file(path, device="cpu"), source=path)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.encoder.state_dict().items()}
    save_file(state, str(out), metadata={"encoder": args.encoder, "source": "imagenet (segmentation-models-pytorch)"})
    print(f"{args.encoder} ImageNet encoder weights written to {out} ({len(state)} tensors); "
          f"use them with --encoder-weights {out}")
    return 0


# --------------------------------------------------------------------------- parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="mobilenet_v2", help="smp encoder name (mobilenet_v2, vgg16, ...)")
    p.add_argument(
        "--encoder-weights",
        default="imagenet",
        help="'imagenet' (needs the cached download), a local .safetensors/.pth file, or 'none'",
    )
    p.add_argument("--task", choices=("both", "seg", "cls"), default="both")
    p.add_argument("--no-skip", action="store_true", help="ablation: decoder without skip connections")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--w-seg", type=float, default=5.0, help="segmentation loss weight (paper best 5:1)")
    p.add_argument("--w-cls", type=float, default=1.0, help="classification loss weight")
    p.add_argument("--seg-loss", choices=("bce", "dice_bce"), default="bce")
    p.add_argument("--no-class-weights", action="store_true", help="plain cross-entropy (no balanced class weights)")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (0 = off)")
    p.add_argument("--monitor", default="val_loss", help="val_loss, val_dice, val_accuracy, val_balanced_accuracy ...")
    p.add_argument("--lr-schedule", choices=("none", "plateau", "cosine"), default="none")
    p.add_argument("--grad-clip", type=float, default=None)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", default="auto", help="dataset layout (auto, busi, isic, lgg, siim, panda, generic, folders)")
    p.add_argument("--strict", action="store_true", help="fail on any dataset problem instead of skipping")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtunet", description="Multi-task UNet: joint classification and segmentation of medical images."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (1 is often fastest on a busy or small CPU)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="summarise a dataset folder and list its problems")
    p.add_argument("dataset")
    _add_data_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a model on a dataset folder")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="output folder (checkpoints, splits, test report)")
    _add_data_args(p)
    _add_model_args(p)
    _add_train_args(p)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--fold", type=int, default=None, help="use k-fold fold K as the test split")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", default=None, help="continue from a last.safetensors")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="continue training a checkpoint on new samples (records its parent)")
    p.add_argument("checkpoint")
    p.add_argument("dataset", help="the new samples (any layout)")
    p.add_argument("--out", required=True)
    _add_data_args(p)
    p.add_argument("--freeze-encoder", action="store_true")
    p.add_argument("--replay", default=None, help="the original training dataset, mixed in (replay)")
    p.add_argument("--replay-size", type=int, default=None, help="how many replay images (default: all)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a dataset (metrics with 95%% CIs)")
    p.add_argument("checkpoint")
    p.add_argument("dataset")
    _add_data_args(p)
    p.add_argument("--split", choices=("auto", "test", "val", "train", "all"), default="auto",
                   help="auto: the checkpoint's test split when it was trained on this dataset, else all")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--json", default=None, help="also write the report as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict masks and classes for images")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("png", "tiff"), default="png")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--mode", choices=("auto", "resize", "native", "tiled"), default="auto")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="train a small model on the synthetic phantom (CPU, ~1-2 min)")
    p.add_argument("--out", default=None, help="output folder (default: a new ./mtunet-demo folder)")
    p.add_argument("--n", type=int, default=96, help="number of phantom images")
    p.add_argument("--size", type=int, default=64, help="image size")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("experiment", help="the paper's experiments: multi- vs single-task, ablation, weights, k-fold")
    p.add_argument("dataset")
    p.add_argument("--preset", choices=("paper",), default="paper")
    p.add_argument("--out", default="mtunet-experiment")
    _add_data_args(p)
    p.add_argument("--encoders", default="vgg16,mobilenet_v2")
    p.add_argument("--studies", default="baselines,ablation,weights",
                   help="comma list of: baselines (multi vs seg-only vs cls-only), ablation (no skips), weights (sweep)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--encoder-weights", default="imagenet")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("fetch-weights", help="save an encoder's ImageNet weights to a file (for offline use)")
    p.add_argument("encoder")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_fetch_weights)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (KeyError,)) and msg.startswith("'"):
        msg = f"missing {msg}"
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    return " ".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.threads:
            import torch

            torch.set_num_threads(max(1, args.threads))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mtunet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, no traceback
        if os.environ.get("MTUNET_DEBUG"):
            raise
        print(f"mtunet: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
