"""The ``mtunet`` command line: arguments -> a run config -> a workflow; events -> text.

    mtunet info DATASET
    mtunet train DATASET --out runs/busi [--encoder timm-tf_efficientnet_lite0 --epochs 20 --image-size 128 ...]
    mtunet finetune CKPT NEW_SAMPLES --out runs/ft
    mtunet evaluate CKPT DATASET [--split auto|test|val|train|all]
    mtunet predict CKPT INPUT... --out DIR
    mtunet export CKPT --format onnx|bioimageio --out FILE
    mtunet demo [--out DIR]
    mtunet experiment DATASET --out DIR [--study paper|finetune]
    mtunet fetch-weights ENCODER --out FILE
    global option: mtunet --threads N COMMAND ...

Every default comes from :class:`~napari_mtunet.config.RunConfig` /
:class:`~napari_mtunet.config.FinetuneConfig` (options left out keep it;
``--resume`` keeps the checkpoint's).  Distributed training:
``torchrun --nproc_per_node=N -m napari_mtunet.cli train ...``.  Errors print
one line (``mtunet: error: ...``) and exit with status 1 (set
``MTUNET_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import (
    ADAPT_BN,
    AUTO_ADAPT_BN,
    DEFAULT_PRESET,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_IMAGE_SIZE,
    PRESETS,
    ConfigError,
    FinetuneConfig,
    RunConfig,
    parse_layout_options,
)
from .textsafe import escape_lines
from .torchrun import is_main_process


def print(*args: Any, **kwargs: Any) -> None:  # noqa: A001 - every line this module prints goes through here
    """``print`` with names and paths made safe for a terminal (:mod:`napari_mtunet.textsafe`): control,
    bidi-override and lone-surrogate characters are shown as escapes; a leading carriage return (a progress
    line rewriting itself) is kept."""
    builtins.print(*(_safe_text(a) if isinstance(a, str) else a for a in args), **kwargs)


def _safe_text(text: str) -> str:
    return "\r" + escape_lines(text[1:]) if text.startswith("\r") else escape_lines(text)

EXIT_ERROR = 1
EXIT_USAGE = 2
D = RunConfig.from_preset()  # what `mtunet train` starts from (the default preset), shown in --help
F = FinetuneConfig()


class CLIError(Exception):
    """A user-facing error: printed as one line."""


def _say(*args: Any) -> None:
    if is_main_process():
        print(*args, flush=True)


class TextProgress:
    """Events -> text: a progress bar per epoch on a terminal, one line per epoch, status lines."""

    def __init__(self, enabled: bool = True, stream: Any = None):
        self.enabled = enabled and is_main_process()
        self.stream = stream or sys.stdout
        self.bar = None
        self.tty = sys.stderr.isatty()

    def __call__(self, ev: Any) -> None:
        if not self.enabled:
            return
        kind = ev.kind
        if kind == "batch_end" and self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=ev.n_batches, desc=f"epoch {ev.epoch}/{ev.epochs}", leave=False, file=sys.stderr)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{ev.loss:.4f}")
        elif kind == "epoch_end":
            self._close()
            vals = {**ev.train, **ev.val}
            shown = " ".join(f"{k}={v:.4f}" for k, v in vals.items())
            star = " *" if ev.improved else ""
            self._print(f"epoch {ev.epoch}/{ev.epochs} {shown} lr={ev.lr:.2e} ({ev.elapsed_s:.0f}s){star}")
        elif kind == "finish":
            self._close()
            self._print(f"finished ({ev.reason}) after {ev.epochs_run} epoch(s); best {ev.monitor}="
                        f"{ev.best_value:.4f} at epoch {ev.best_epoch}")
            if ev.best_checkpoint:
                self._print(f"best checkpoint: {ev.best_checkpoint}")
        elif kind == "status":
            self._close()
            self._print(ev.text)
        elif kind == "progress" and ev.item:
            self._print(f"[{ev.done}/{ev.total}] {ev.item}")
        elif kind == "error":
            self._close()

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _drive(job: Any, quiet: bool = False) -> Any:
    from .events import drive

    return drive(job, [TextProgress(not quiet)])


# --------------------------------------------------------------------------- arguments -> configs


def _none_word(v: str | None) -> str | None:
    return None if v is None or v.strip().lower() in ("", "none") else v


def _layout_option(text: str) -> tuple[str, Any]:
    """``--layout-option NAME=VALUE`` (:func:`~napari_mtunet.config.parse_layout_options`, one item)."""
    if "," in text:
        raise argparse.ArgumentTypeError(f"one NAME=VALUE per --layout-option, got {text!r}")
    try:
        (item,) = parse_layout_options(text).items() or [None]
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("layout options: ").removeprefix("layout_options: "))
    if item is None:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. level=1), got {text!r}")
    return item


def _layout_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--layout-option`` values given (a later one of the same name wins), or None when none were."""
    given = getattr(args, "layout_option", None)
    return dict(given) if given else None


def run_from_args(args: argparse.Namespace, base: RunConfig) -> RunConfig:
    """``base`` with every option the user gave (options left out are None and keep ``base``'s value)."""
    d = base.to_dict()
    m, p, data, t, aug = d["model"], d["preprocessing"], d["data"], d["train"], d["data"]["augment"]
    given = {k: v for k, v in vars(args).items() if v is not None}
    if "layout_option" in given:
        data["layout_options"] = dict(given["layout_option"])
    if "dataset" in given:
        data["root"] = str(Path(given["dataset"]).resolve())
    for opt, (section, key) in {
        "encoder": (m, "encoder_name"), "task": (m, "task"), "image_size": (p, "image_size"),
        "layout": (data, "layout"), "val_fraction": (data, "val_fraction"), "test_fraction": (data, "test_fraction"),
        "folds": (data, "n_folds"), "fold": (data, "fold"), "max_samples": (data, "max_samples"),
        "workers": (data, "num_workers"), "epochs": (t, "epochs"), "batch_size": (t, "batch_size"), "lr": (t, "lr"),
        "w_seg": (t, "w_seg"), "w_cls": (t, "w_cls"), "seg_loss": (t, "seg_loss"), "monitor": (t, "monitor"),
        "encoder_lr_scale": (t, "encoder_lr_scale"), "warmup_epochs": (t, "warmup_epochs"),
        "grad_clip": (t, "grad_clip"), "device": (t, "device"),
    }.items():
        if opt in given:
            section[key] = given[opt]
    if "encoder_weights" in given:
        m["encoder_weights"] = _none_word(given["encoder_weights"])
    if "interactive" in given:
        m["prompts"] = bool(given["interactive"])
    if given.get("no_skip"):
        m["skip_connections"] = False
    if given.get("strict"):
        data["strict"] = True
    if given.get("balanced_sampling"):
        data["balanced_sampling"] = True
    if given.get("no_augment"):
        aug["enabled"] = False
    if given.get("no_class_weights"):
        t["class_weights"] = None
    if "patience" in given:
        t["early_stopping_patience"] = None if given["patience"] <= 0 else given["patience"]
    if "lr_schedule" in given:
        t["lr_schedule"] = _none_word(given["lr_schedule"])
    if "seed" in given:
        t["seed"] = data["seed"] = given["seed"]
    return RunConfig.from_dict(d)


# --------------------------------------------------------------------------- commands


def cmd_info(args) -> int:
    from .config import DataConfig
    from .workflows import load

    loaded = load(DataConfig(root=args.dataset, layout=args.layout or "auto", strict=bool(args.strict),
                             layout_options=_layout_options(args) or {}))
    print(loaded.summary())
    return 0


def cmd_train(args) -> int:
    from .workflows import iter_train

    base = RunConfig.from_preset(args.preset or DEFAULT_PRESET)
    if args.resume:
        from .checkpoint import read_metadata

        if args.preset:
            raise CLIError("--preset starts a new run; a resumed run keeps its checkpoint's settings")
        base = RunConfig.from_metadata(read_metadata(args.resume))
    run = run_from_args(args, base)
    outcome = _drive(iter_train(run, args.out, resume=args.resume, n_boot=args.n_boot), quiet=args.quiet)
    if is_main_process():
        print(f"outputs in {Path(args.out).resolve()}")
    return 0 if outcome.reason != "cancelled" else EXIT_ERROR


def cmd_finetune(args) -> int:
    from .workflows import iter_finetune

    if _layout_options(args):
        raise CLIError("--layout-option: fine-tuning reads its corrections as they are (e.g. the generic layout "
                       "the Annotate widget writes); layout options are not used here")
    d = F.to_dict()
    for key in ("lr", "batch_size", "steps_per_sample", "encoder_lr_scale", "replay_ratio", "check_fraction",
                "device", "seed"):
        if getattr(args, key, None) is not None:
            d[key] = getattr(args, key)
    if args.no_augment:
        d["augment"] = False
    if args.train_bn:
        d["freeze_bn"] = False
    if args.adapt_bn is not None:
        d["adapt_bn"] = args.adapt_bn
    outcome = _drive(iter_finetune(args.checkpoint, args.dataset, args.out, config=FinetuneConfig.from_dict(d),
                                   replay=args.replay, layout=args.layout or "auto", unlabelled=args.unlabelled),
                     quiet=args.quiet)
    if outcome.child is None:
        raise CLIError("fine-tuning stopped before it finished; no checkpoint was written")
    print(f"fine-tuned checkpoint: {outcome.child} (parent {Path(args.checkpoint).name})")
    return 0


def cmd_evaluate(args) -> int:
    from .paths import unique_path, write_atomic
    from .workflows import evaluate

    if args.interactive:
        from .workflows.evaluate import evaluate_interactive

        tty = sys.stderr.isatty()

        def progress(done: int, name: str) -> None:
            if tty:
                print(f"\r[{done}] {name[:60]:<60}", end="", file=sys.stderr, flush=True)

        res = evaluate_interactive(args.checkpoint, args.dataset, split=args.split, layout=args.layout or "auto",
                                   device=args.device, max_clicks=args.max_clicks, n_boot=args.n_boot,
                                   progress=progress, layout_options=_layout_options(args))
        if tty:
            print(file=sys.stderr)
    else:
        res = evaluate(args.checkpoint, args.dataset, split=args.split, layout=args.layout or "auto",
                       device=args.device, threshold=args.threshold, n_boot=args.n_boot,
                       layout_options=_layout_options(args))
    print(res.model_description)
    print(res.report.format())
    if args.json:
        path = unique_path(Path(args.json))
        write_atomic(path, json.dumps(res.report.to_dict(), indent=1))
        print(f"report written to {path}")
    return 0


def cmd_predict(args) -> int:
    from .workflows import iter_predict_files

    job = iter_predict_files(args.checkpoint, args.inputs, args.out, fmt=args.format, threshold=args.threshold,
                             mode=args.mode, device=args.device, backend=args.backend)
    try:
        outcome = _drive(job)
    except KeyboardInterrupt as exc:  # the workflow says how far it got (the table keeps its .partial name)
        job.close()
        print(f"mtunet: interrupted: {exc}" if str(exc) else "mtunet: interrupted; the predictions table in "
              f"{args.out} keeps its .partial name (the run is incomplete)", file=sys.stderr)
        return 130
    if not outcome.complete:
        return EXIT_ERROR
    return 0 if outcome.n_ok else EXIT_ERROR


def cmd_export(args) -> int:
    try:
        from .export import export_model
    except ImportError as exc:
        raise CLIError(f"model export is not available in this installation ({exc})") from None
    kwargs: dict[str, Any] = {}
    if args.format == "bioimageio":
        kwargs = {k: v for k, v in (
            ("name", args.name), ("description", args.description), ("authors", args.author),
            ("maintainers", args.maintainer), ("license", args.license), ("version", args.model_version),
            ("git_repo", args.git_repo), ("training_data", args.training_data), ("config", args.config),
            ("sample_image", args.sample_image),
        ) if v}
        kwargs["evaluation"] = args.evaluation or "auto"
        kwargs["include_pytorch"] = args.pytorch_weights
    elif any(getattr(args, k) for k in ("name", "description", "author", "maintainer", "license", "model_version",
                                        "git_repo", "training_data", "config", "evaluation", "sample_image")) \
            or args.pytorch_weights:
        raise CLIError("the package description options (--name, --author, ...) are for --format bioimageio")
    path = export_model(args.checkpoint, args.out, args.format, **kwargs)
    print(f"exported {args.checkpoint} as {args.format} to {path}")
    if args.format == "bioimageio" and not (args.maintainer or _export_defaults(args).get("maintainers")):
        print("note: no --maintainer given; bioimage.io's upload wants one with a GitHub user name "
              "(--maintainer @USER, or `maintainers:` in the defaults file)")
    return 0


def _export_defaults(args) -> dict:
    from .export.bioimageio_export import load_export_config

    return load_export_config(args.config)


def cmd_demo(args) -> int:
    from .workflows import iter_demo

    _drive(iter_demo(out=args.out, n=args.n, size=args.size, epochs=args.epochs, device=args.device, seed=args.seed))
    return 0


#: ``mtunet experiment`` options by study: (option dest, settings field); options left out keep the settings'
#: dataclass defaults (ExperimentSettings, FinetuneStudySettings).
_PAPER_OPTIONS = {"layout": "layout", "preset": "preset", "folds": "folds", "epochs": "epochs",
                  "image_size": "image_size", "max_samples": "max_samples", "batch_size": "batch_size", "lr": "lr",
                  "patience": "patience", "device": "device", "seed": "seed", "n_boot": "n_boot"}
_FINETUNE_OPTIONS = {"layout": "layout", "bases": "n_bases", "select_shifts": "n_select",
                     "report_shifts": "n_report", "draws": "draws", "k": "k", "epochs": "base_epochs",
                     "image_size": "image_size", "device": "device", "seed": "seed"}
_PAPER_ONLY = ("studies", "weight_ratios", "folds", "only_folds", "max_samples", "batch_size", "lr", "patience",
               "no_augment", "n_boot", "layout_option")
_FINETUNE_ONLY = ("methods", "bases", "select_shifts", "report_shifts", "draws", "k", "sets", "interactive_base")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _settings_from(args: argparse.Namespace, options: dict[str, str], not_here: Sequence[str],
                   study: str) -> dict[str, Any]:
    """The settings fields of the options given (None / False = left out); an option of the other study is
    refused rather than silently ignored."""
    wrong = [k for k in not_here if getattr(args, k, None) not in (None, False)]
    if wrong:
        names = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise CLIError(f"{names}: not an option of --study {study}")
    kw = {field: getattr(args, opt) for opt, field in options.items() if getattr(args, opt, None) is not None}
    if args.encoder_weights is not None:
        kw["encoder_weights"] = _none_word(args.encoder_weights)
    return kw


def cmd_experiment(args) -> int:
    if args.study == "finetune":
        from .finetune_study import FinetuneStudySettings, run_finetune_study

        kw = _settings_from(args, _FINETUNE_OPTIONS, _PAPER_ONLY, "finetune")
        if args.methods is not None:
            kw["methods"] = _csv(args.methods)
        if args.encoders is not None:
            kw["encoder"] = (_csv(args.encoders) or [""])[0]
        if args.sets is not None:
            kw["sets"] = _csv(args.sets)
        if args.interactive_base:
            kw["interactive"] = True
        report = run_finetune_study(FinetuneStudySettings(dataset=str(args.dataset), **kw), Path(args.out), log=_say)
        _say(f"report: {report}")
        return 0
    from .experiments import ExperimentSettings, parse_ratios, run_experiment

    kw = _settings_from(args, _PAPER_OPTIONS, _FINETUNE_ONLY, "paper")
    if args.encoders is not None:
        kw["encoders"] = _csv(args.encoders)
    if args.studies is not None:
        kw["studies"] = _csv(args.studies)
    if args.no_augment:
        kw["augment"] = False
    if args.only_folds:
        kw["only_folds"] = [int(f) for f in args.only_folds.split(",")]
    if args.weight_ratios:
        kw["weight_ratios"] = parse_ratios(args.weight_ratios)
    if args.layout_option:
        kw["layout_options"] = _layout_options(args)
    report = run_experiment(ExperimentSettings(dataset=str(args.dataset), **kw), Path(args.out), log=_say)
    _say(f"report: {report}")
    return 0


def cmd_fetch_weights(args) -> int:
    from safetensors.torch import save_file

    from .config import ModelConfig
    from .encoders import EncoderWeightsError, imagenet_weights_file, load_encoder_weights, read_state_dict
    from .model import MultiTaskUNet

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CLIError(f"{out}: the output file must end in .safetensors")
    if out.exists():
        raise CLIError(f"{out} already exists; not overwriting it")
    try:
        path = imagenet_weights_file(args.encoder)
    except EncoderWeightsError as exc:
        raise CLIError(str(exc)) from None
    model = MultiTaskUNet(ModelConfig(encoder_name=args.encoder, encoder_weights=None, task="seg"))
    load_encoder_weights(model.encoder, read_state_dict(path), source=path, ordered=not path.endswith(".safetensors"))
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.encoder.state_dict().items()}
    save_file(state, str(out), metadata={"encoder": args.encoder, "source": "imagenet"})
    print(f"{args.encoder} ImageNet encoder weights written to {out} ({len(state)} tensors); "
          f"use them with --encoder-weights {out}")
    return 0


# --------------------------------------------------------------------------- parser


def _h(text: str, default: Any) -> str:
    return f"{text} (default: {default})"


def _defaults(settings: type) -> dict[str, Any]:
    """The field defaults of a settings dataclass (what an option left out keeps)."""
    out = {}
    for f in dataclasses.fields(settings):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", default=None,
                   help=_h("dataset layout: auto, busi, isic, lgg, siim, panda, generic, folders", D.data.layout))
    p.add_argument("--strict", action="store_true", default=None,
                   help="fail on any dataset problem instead of skipping the bad samples")
    p.add_argument("--layout-option", action="append", type=_layout_option, default=None, metavar="NAME=VALUE",
                   help="repeatable: an option of the layout reader, e.g. PANDA's level=1 or patch_size=512 "
                        "(docs/datasets.md); saved in the run config")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default=None,
                   help=_h("smp encoder name: mobilenet_v2, vgg16, timm-tf_efficientnet_lite0 (pretrained offline), ...",
                           D.model.encoder_name))
    p.add_argument("--encoder-weights", default=None,
                   help=_h("'imagenet' (timm-tf_efficientnet_lite0: from its installed package, no internet; "
                           "others: the model hub), a local .safetensors/.pth file, or 'none'", D.model.encoder_weights))
    p.add_argument("--task", choices=("both", "seg", "cls"), default=None, help=_h("what to train", D.model.task))
    p.add_argument("--no-skip", action="store_true", default=None, help="ablation: decoder without skip connections")
    p.add_argument("--interactive", action=argparse.BooleanOptionalAction, default=None,
                   help=_h("train for interactive segmentation too: click and box prompts (a simulated user during "
                           "training); the model still predicts without prompts", D.model.prompts))
    p.add_argument("--image-size", type=int, default=None, help=_h("input size (multiple of 32)", D.preprocessing.image_size))


def _add_train_args(p: argparse.ArgumentParser) -> None:
    t = D.train
    p.add_argument("--epochs", type=int, default=None, help=_h("epochs", t.epochs))
    p.add_argument("--batch-size", type=int, default=None, help=_h("batch size", t.batch_size))
    p.add_argument("--lr", type=float, default=None, help=_h("learning rate (Adam)", t.lr))
    p.add_argument("--encoder-lr-scale", type=float, default=None,
                   help=_h("encoder learning rate = lr x this", t.encoder_lr_scale))
    p.add_argument("--warmup-epochs", type=float, default=None, help=_h("linear warm-up epochs", t.warmup_epochs))
    p.add_argument("--lr-schedule", choices=("none", "plateau", "cosine"), default=None, help=_h("schedule", t.lr_schedule))
    p.add_argument("--w-seg", type=float, default=None, help=_h("segmentation loss weight", t.w_seg))
    p.add_argument("--w-cls", type=float, default=None, help=_h("classification loss weight", t.w_cls))
    p.add_argument("--seg-loss", choices=("bce", "dice_bce"), default=None, help=_h("segmentation loss", t.seg_loss))
    p.add_argument("--no-class-weights", action="store_true", default=None,
                   help="plain cross-entropy (no balanced class weights)")
    p.add_argument("--patience", type=int, default=None, help=_h("early-stopping patience in epochs, 0 = off",
                                                                  t.early_stopping_patience))
    p.add_argument("--monitor", default=None, help=_h("val_loss, val_dice, val_accuracy, val_balanced_accuracy ...",
                                                      t.monitor))
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--val-fraction", type=float, default=None, help=_h("validation fraction", D.data.val_fraction))
    p.add_argument("--test-fraction", type=float, default=None, help=_h("held-out test fraction", D.data.test_fraction))
    p.add_argument("--fold", type=int, default=None, help="use k-fold fold K as the test split")
    p.add_argument("--folds", type=int, default=None, help=_h("number of folds for --fold", D.data.n_folds))
    p.add_argument("--max-samples", type=int, default=None, help="use a stratified subset of this many images")
    p.add_argument("--no-augment", action="store_true", default=None)
    p.add_argument("--balanced-sampling", action="store_true", default=None, help="class-balanced batches")
    p.add_argument("--workers", type=int, default=None, help=_h("data-loading processes", D.data.num_workers))
    p.add_argument("--seed", type=int, default=None, help=_h("seed (split and training)", D.train.seed))
    p.add_argument("--device", default=None, help=_h("auto, cpu, cuda, cuda:N or mps", D.train.device))


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
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help=f"the recipe to start from (default: {DEFAULT_PRESET}): cpu = the best model two CPU cores "
                        "train in about 30 minutes (see docs/results.md); gpu = the paper's budget (256 px, 50 "
                        "epochs, batch 32, early stopping). Options given override it")
    p.add_argument("--out", required=True, help="output folder (checkpoints, splits.json, test_report.json)")
    _add_data_args(p)
    _add_model_args(p)
    _add_train_args(p)
    p.add_argument("--resume", default=None,
                   help="continue the run of this last.safetensors (its settings are kept; options given must match)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the test-report CIs")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on a few new samples (records its parent)")
    p.add_argument("checkpoint")
    p.add_argument("dataset", help="the new samples (any layout, e.g. the folder Annotate writes)")
    p.add_argument("--out", required=True)
    _add_data_args(p)
    p.add_argument("--replay", default=None, help="dataset to replay against forgetting "
                   "(default: the checkpoint's own training data, when reachable)")
    p.add_argument("--replay-ratio", type=float, default=None, help=_h("replayed samples per new sample", F.replay_ratio))
    p.add_argument("--steps-per-sample", type=float, default=None,
                   help=_h(f"optimisation steps per new sample (clamped to {F.min_steps}-{F.max_steps})",
                           F.steps_per_sample))
    p.add_argument("--lr", type=float, default=None, help=_h("learning rate", F.lr))
    p.add_argument("--encoder-lr-scale", type=float, default=None, help=_h("encoder lr = lr x this; 0 freezes it",
                                                                          F.encoder_lr_scale))
    p.add_argument("--batch-size", type=int, default=None, help=_h("batch size", F.batch_size))
    p.add_argument("--check-fraction", type=float, default=None,
                   help=_h("fraction of the new samples held back to check before/after", F.check_fraction))
    p.add_argument("--unlabelled", nargs="+", default=None, metavar="IMAGES",
                   help="uncorrected images of the same scanner (folders or files; no labels needed): the model "
                        "re-estimates its BatchNorm statistics on them (see --adapt-bn; in the fine-tuning study "
                        "this gained less than fine-tuning alone, docs/results.md)")
    p.add_argument("--adapt-bn", choices=ADAPT_BN, default=None,
                   help=_h("BatchNorm statistics: keep the base model's, re-estimate them on the new images "
                           "(corrections + --unlabelled), or on those mixed with replayed base images; auto: "
                           f"{AUTO_ADAPT_BN} with --unlabelled, else keep", F.adapt_bn))
    p.add_argument("--train-bn", action="store_true", help="update BatchNorm statistics (default: keep the base model's)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=None)
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
    p.add_argument("--interactive", action="store_true",
                   help="evaluate click and box prompts with a simulated user (RITM protocol: NoC@85/90, IoU after "
                        "1/3/5 clicks, box Dice beside the ellipse inscribed in the box); needs an --interactive model")
    p.add_argument("--max-clicks", type=int, default=20, help="clicks per image for --interactive (default: 20)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict masks and classes for image files or folders")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image files or folders (ground-truth *_mask* files are skipped)")
    p.add_argument("--out", required=True,
                   help="output folder: predictions.csv + masks/ (never the input folder; a new folder beside or inside it is fine)")
    p.add_argument("--format", choices=("png", "tiff"), default="png")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--mode", choices=("auto", "resize", "native", "tiled"), default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="onnxruntime: faster on CPU-only machines (needs the 'onnx' extra)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export", help="export a checkpoint as ONNX or a bioimage.io model package",
        description="Export a checkpoint. For --format bioimageio, options left out come from the defaults file "
                    "(--config, else $MTUNET_CONFIG_DIR/export.yaml or ~/.config/napari-mtunet/export.yaml: a YAML "
                    "mapping with the keys name, description, authors, maintainers, license, version, git_repo, "
                    "training_data, tags; see docs/export.md).")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=("onnx", "bioimageio"), required=True)
    p.add_argument("--out", required=True, help="output file (.onnx, or .zip for bioimage.io); never overwritten")
    g = p.add_argument_group("bioimage.io package description")
    g.add_argument("--name", default=None, help="the model's name (default: generated from the encoder)")
    g.add_argument("--description", default=None, help="one or two sentences (default: generated from the model)")
    g.add_argument("--author", action="append", default=None, metavar="PERSON",
                   help='repeatable: "Jane Doe; affiliation=Lab; orcid=0000-0002-1825-0097; github_user=jdoe" '
                        "(default: the defaults file, else your account's name)")
    g.add_argument("--maintainer", action="append", default=None, metavar="PERSON",
                   help='repeatable: "@githubuser" or "Jane Doe; github_user=jdoe" (bioimage.io asks for one)')
    g.add_argument("--license", default=None, help="SPDX licence id of the exported weights (default: CC-BY-4.0)")
    g.add_argument("--model-version", default=None, help="version of this model (default: 0.1.0)")
    g.add_argument("--git-repo", default=None, help="repository URL (default: napari-mtunet's)")
    g.add_argument("--training-data", default=None,
                   help="a bioimage.io dataset id or a URL of the training data (BUSI is described automatically)")
    g.add_argument("--evaluation", default=None,
                   help="held-out evaluation report (mtunet evaluate --json); default: the run's test_report.json "
                        "beside the checkpoint")
    g.add_argument("--sample-image", action="append", default=None, metavar="FILE",
                   help="repeatable: test input and cover images (default: the run's held-out images if still "
                        "there, else the synthetic phantom)")
    g.add_argument("--pytorch-weights", action="store_true",
                   help="also include pytorch_state_dict weights (they need napari-mtunet installed; ONNX stays "
                        "the format a consumer needs)")
    g.add_argument("--config", default=None, help="export defaults file (YAML)")
    p.set_defaults(func=cmd_export)

    from .workflows.demo import DEMO  # the demo's defaults, in one place

    p = sub.add_parser(
        "demo", help="train a small model on the synthetic phantom (CPU, 1-2 minutes), then say what to do next",
        description="Train a small multi-task UNet on the built-in synthetic phantom and report held-out accuracy "
                    "and Dice. It needs 1 to 1.5 minutes of CPU time (docs/results.md has the measured times).")
    p.add_argument("--out", default=None, help="output folder (default: a new ./mtunet-demo folder)")
    p.add_argument("--n", type=int, default=DEMO.n, help=f"number of phantom images (default: {DEMO.n})")
    p.add_argument("--size", type=int, default=DEMO.size, help=f"image size (default: {DEMO.size})")
    p.add_argument("--epochs", type=int, default=DEMO.epochs, help=f"(default: {DEMO.epochs})")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=DEMO.seed, help=f"(default: {DEMO.seed})")
    p.set_defaults(func=cmd_demo)

    from .experiments import WEIGHT_SWEEP, ExperimentSettings  # the studies' defaults live in their settings
    from .finetune_study import FinetuneStudySettings

    E, S = _defaults(ExperimentSettings), _defaults(FinetuneStudySettings)
    p = sub.add_parser("experiment", help="the paper's experiments: multi- vs single-task, ablation, weights, k-fold")
    p.add_argument("dataset")
    p.add_argument("--preset", choices=("paper",), default=None, help=_h("protocol", E["preset"]))
    p.add_argument("--study", choices=("paper", "finetune"), default="paper",
                   help="paper: multi- vs single-task, ablation, weights (k-fold); finetune: fine-tuning on k "
                        "corrections of a shifted 'new scanner' (see docs/results.md)")
    g = p.add_argument_group("fine-tuning study (--study finetune)")
    g.add_argument("--methods", default=None, help="comma list of fine-tune methods (default: all; see docs/results.md)")
    g.add_argument("--bases", type=int, default=None, help=_h("base models, each on its own split", S["n_bases"]))
    g.add_argument("--select-shifts", type=int, default=None, help=_h("random shifts that choose the defaults",
                                                                     S["n_select"]))
    g.add_argument("--report-shifts", type=int, default=None, help=_h("fresh random shifts that report them",
                                                                     S["n_report"]))
    g.add_argument("--draws", type=int, default=None, help=_h("correction draws per base and shift", S["draws"]))
    g.add_argument("--k", type=int, default=None, help=_h("corrected images per draw", S["k"]))
    g.add_argument("--sets", default=None, help=_h("which shift sets to run now", ",".join(S["sets"])))
    g.add_argument("--interactive-base", action="store_true", help="train the base models with --interactive")
    p.add_argument("--out", default="mtunet-experiment")
    _add_data_args(p)
    p.add_argument("--encoders", default=None,
                   help=_h("comma list of encoders (the fine-tuning study uses the first)",
                           f"{','.join(E['encoders'])}; fine-tuning study: {S['encoder']}"))
    p.add_argument("--studies", default=None,
                   help=_h("comma list of: baselines (multi vs seg-only vs cls-only), ablation (no skips), weights "
                           "(sweep)", ",".join(E["studies"])))
    p.add_argument("--weight-ratios", default=None,
                   help=_h("weights study: the w_seg:w_cls ratios to sweep, e.g. 1:1,2:1",
                           ",".join(f"{ws:g}:{wc:g}" for ws, wc in WEIGHT_SWEEP if (ws, wc) != (5, 1))))
    p.add_argument("--folds", type=int, default=None, help=_h("folds", E["folds"]))
    p.add_argument("--only-folds", default=None,
                   help="run only these folds now, e.g. 0,1,2 (several processes can share one --out)")
    p.add_argument("--epochs", type=int, default=None,
                   help=_h("epochs", f"{E['epochs']}; fine-tuning study base models: {S['base_epochs']}"))
    p.add_argument("--image-size", type=int, default=None,
                   help=_h("input size", f"{E['image_size']}; fine-tuning study: {S['image_size']}"))
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help=_h("batch size", E["batch_size"]))
    p.add_argument("--lr", type=float, default=None, help=_h("learning rate", E["lr"]))
    p.add_argument("--patience", type=int, default=None, help=_h("early-stopping patience, 0 = off", E["patience"]))
    p.add_argument("--encoder-weights", default=None, help=_h("'imagenet', a file or 'none'", E["encoder_weights"]))
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default=None, help=_h("auto, cpu, cuda, cuda:N or mps", E["device"]))
    p.add_argument("--seed", type=int, default=None, help=_h("seed", E["seed"]))
    p.add_argument("--n-boot", type=int, default=None, help=_h("bootstrap resamples", E["n_boot"]))
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("fetch-weights", help="save an encoder's ImageNet weights to a file (for offline use)")
    p.add_argument("encoder")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_fetch_weights)
    return bound_numeric_options(parser)


#: Bounds of every numeric option, by destination: ``(low, high, low excluded)``.  A numeric option missing
#: here is refused when the parser is built, so none can reach torch or numpy unchecked (``--threads 65536``
#: crashed torch).  Limits that the config has are the config's.
NUMERIC_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "threads": (1, 1024, False),
    "epochs": (1, MAX_EPOCHS, False), "batch_size": (1, MAX_BATCH, False), "image_size": (32, MAX_IMAGE_SIZE, False),
    "lr": (0.0, 10.0, True), "encoder_lr_scale": (0.0, 10.0, False), "warmup_epochs": (0.0, MAX_EPOCHS, False),
    "w_seg": (0.0, 1e6, False), "w_cls": (0.0, 1e6, False), "grad_clip": (0.0, 1e6, True),
    "patience": (0, MAX_EPOCHS, False), "val_fraction": (0.0, 0.99, False), "test_fraction": (0.0, 0.99, False),
    "fold": (0, 99, False), "folds": (2, 100, False), "max_samples": (2, 10**9, False), "workers": (0, 256, False),
    "seed": (0, 2**32 - 1, False), "n_boot": (0, 10_000, False), "threshold": (0.0, 1.0, False),
    "replay_ratio": (0.0, 100.0, False), "steps_per_sample": (0.0, 1000.0, False), "check_fraction": (0.0, 0.99, False),
    "max_clicks": (1, 100, False), "n": (8, 100_000, False), "size": (32, 1024, False), "repeats": (1, 100, False),
    "bases": (1, 20, False), "select_shifts": (0, 1000, False), "report_shifts": (0, 1000, False),
    "draws": (1, 100, False), "k": (1, 100_000, False),
}
#: Comma-separated integer lists, by destination: ``(low, high)`` of each item.
LIST_BOUNDS: dict[str, tuple[int, int]] = {"only_folds": (0, 99)}


def _range_text(kind: type, lo: float, hi: float, lo_open: bool) -> str:
    what = "an integer" if kind is int else "a number"
    return f"{what} {'above' if lo_open else 'from'} {lo:g} {'up to' if lo_open else 'to'} {hi:g}"


def _bounded_type(kind: type, dest: str) -> Any:
    lo, hi, lo_open = NUMERIC_BOUNDS[dest]

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {_range_text(kind, lo, hi, lo_open)}, got {text!r}") from None
        if (kind is float and not math.isfinite(value)) or value < lo or (lo_open and value == lo) or value > hi:
            raise argparse.ArgumentTypeError(f"must be {_range_text(kind, lo, hi, lo_open)}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _int_list_type(dest: str) -> Any:
    lo, hi = LIST_BOUNDS[dest]

    def parse(text: str) -> str:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        try:
            values = [int(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers from {lo} to {hi}, got {text!r}") from None
        if not values or any(not lo <= v <= hi for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated integers from {lo} to {hi}, got {text!r}")
        return ",".join(str(v) for v in values)

    return parse


def bound_numeric_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every int/float option of ``parser`` (and its sub-commands) its range from :data:`NUMERIC_BOUNDS`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                bound_numeric_options(sub)
        elif action.type in (int, float):
            if action.dest not in NUMERIC_BOUNDS:
                raise RuntimeError(f"numeric option {action.option_strings or action.dest} has no bounds in "
                                   "NUMERIC_BOUNDS")
            action.type = _bounded_type(action.type, action.dest)
        elif action.dest in LIST_BOUNDS:
            action.type = _int_list_type(action.dest)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and msg.startswith("'"):
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
