"""Configuration: the one source of truth for model, preprocessing, data and training settings.

:class:`RunConfig` holds everything one training run needs, in four parts
(:class:`ModelConfig`, :class:`Preprocessing`, :class:`DataConfig` with its
:class:`AugmentConfig`, :class:`TrainConfig`).  Their field defaults are the
project's defaults, and :data:`PRESETS` name recipes as overrides of them:
``mtunet train`` and the Train widget start from the default preset
(:meth:`RunConfig.from_preset`), the experiments and the Python API from
``RunConfig()``, and all override what the user chose, so a default is
changed in exactly one place.  Rules that span parts
(a monitor the task cannot produce, loss weights of a head the task does
not have, ...) are checked by :meth:`RunConfig.validate`.  A run config is
saved whole in every checkpoint; :meth:`RunConfig.from_metadata` reads it
back and migrates checkpoints of the first format.

:class:`FinetuneConfig` holds the one set of fine-tuning defaults shared by
``mtunet finetune``, the Annotate widget and :func:`napari_mtunet.workflows.finetune`.

Everything here is plain dataclasses: no Qt, no torch at import.
``from_dict`` checks every value's type before anything is built (the
values may come from an untrusted checkpoint), then ``__post_init__`` checks
ranges, so an error names the part, the field and the problem.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

Task = Literal["both", "seg", "cls"]
TASKS: tuple[str, ...] = ("both", "seg", "cls")

#: Colour channels of every image the network sees (greyscale is replicated, alpha dropped):
#: the one place this number is written.  A model's whole input is :attr:`ModelConfig.input_channels`.
IMAGE_CHANNELS = 3
#: The guidance channels of an interactive (``ModelConfig.prompts``) model, in input order after the image:
#: positive clicks, negative clicks, the previous mask and the box (see :mod:`napari_mtunet.prompts`).
GUIDANCE_CHANNELS: tuple[str, ...] = ("positive_clicks", "negative_clicks", "previous_mask", "box")

#: The encoders documented and tested by the project; any smp encoder name works.
DOCUMENTED_ENCODERS: tuple[str, ...] = ("mobilenet_v2", "vgg16", "timm-tf_efficientnet_lite0")

from .encoders import IMAGENET_MEAN, IMAGENET_STD, pretrained_normalization  # noqa: F401 - torch-free table
from .textsafe import check_name, escape  # noqa: E402 - names shown to people are checked where they enter

#: Upper bounds on what a configuration may describe (far above any real model);
#: they keep an untrusted checkpoint from making us allocate absurd networks.
MAX_CLASSES = 1000
MAX_NAME_CHARS = 200
MAX_CHANNELS = 2048
MAX_IMAGE_SIZE = 4096
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_LAYOUT_OPTIONS = 32

#: Monitorable quantities and whether lower is better; the heads each needs.
MONITORS: dict[str, str] = {
    "val_loss": "min",
    "val_seg_loss": "min",
    "val_cls_loss": "min",
    "val_dice": "max",
    "val_accuracy": "max",
    "val_balanced_accuracy": "max",
    "train_loss": "min",
}
_MONITOR_TASKS: dict[str, tuple[str, ...]] = {
    "val_dice": ("both", "seg"),
    "val_seg_loss": ("both", "seg"),
    "val_accuracy": ("both", "cls"),
    "val_balanced_accuracy": ("both", "cls"),
    "val_cls_loss": ("both", "cls"),
}

T = TypeVar("T")
#: A value of a layout reader's option (``DataConfig.layout_options``).
LayoutOption = Union[int, float, str, bool, None]


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


# --------------------------------------------------------------------------- typed from_dict


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` (decoded JSON) fits the type annotation ``hint``."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        key, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(_type_ok(k, key) and _type_ok(v, item) for k, v in value.items())
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_type_ok(v, h) for v, h in zip(value, args))
        item = args[0] if args else Any
        return all(_type_ok(v, item) for v in value)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return True


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
            hint.__name__, hint.__name__)
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def _from_dict(cls: type[T], data: Any, *, where: str) -> T:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(str(k)[:60] for k in set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        if not _type_ok(v, hints[k]):
            shown = repr(v)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            expected = _type_name(hints[k])
            raise ConfigError(f"{where}: field {k!r} must be {expected}, got {shown}")
        kwargs[k] = tuple(v) if isinstance(v, list) and typing.get_origin(hints[k]) is tuple else v
    try:
        return cls(**kwargs)  # type: ignore[call-arg]
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _finite(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    return v


class _Dict:
    """``to_dict`` / ``from_dict`` for the config dataclasses."""

    _where = "config"

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, _Dict):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, list):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Any):
        return _from_dict(cls, data, where=cls._where)

    def replace(self, **changes: Any):
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


# --------------------------------------------------------------------------- parts


@dataclass
class Preprocessing(_Dict):
    """How a raw image becomes the model's input; saved in every checkpoint.

    The model itself receives a float tensor ``(B, 3, H, W)`` in ``[0, 1]`` and
    applies ``mean``/``std`` internally (buffers in the network), so callers
    never normalise by hand.  Greyscale images are replicated to three
    channels (so ImageNet-pretrained first convolutions are used unchanged),
    RGBA drops alpha, integer images are scaled by their dtype's range and
    float images are used as-is when within ``[0, 1]`` or min-max scaled
    otherwise (see :func:`napari_mtunet.preprocess.to_float_rgb`).
    """

    _where = "preprocessing"

    image_size: int = 256
    #: True: whole images are resized to ``image_size`` (BUSI, ISIC ...).
    #: False: the model was trained on native-resolution patches (PANDA) and
    #: prediction runs tiled at native resolution.
    resize: bool = True
    #: Input normalisation; None = the encoder's pretraining statistics
    #: (:func:`napari_mtunet.encoders.pretrained_normalization`), resolved when
    #: the model is built and stored in the checkpoint.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        size = int(self.image_size)
        if size < 32 or size % 32 or size > MAX_IMAGE_SIZE:
            raise ConfigError(
                f"image_size must be a multiple of 32 in [32, {MAX_IMAGE_SIZE}] (the UNet downsamples 5x), "
                f"got {self.image_size}"
            )
        self.image_size = size
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both mean and std, or neither (the encoder's own)")
        if self.mean is None:
            return
        if len(self.mean) != IMAGE_CHANNELS or len(self.std) != IMAGE_CHANNELS:
            raise ConfigError(f"mean and std must have {IMAGE_CHANNELS} values (RGB)")
        self.mean = tuple(_finite("mean", m) for m in self.mean)  # type: ignore[assignment]
        self.std = tuple(_finite("std", s) for s in self.std)  # type: ignore[assignment]
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")

    @property
    def resolved(self) -> bool:
        return self.mean is not None

    def for_encoder(self, encoder_name: str) -> Preprocessing:
        """A copy whose unset mean/std are the encoder's pretraining statistics."""
        if self.resolved:
            return dataclasses.replace(self)
        mean, std = pretrained_normalization(encoder_name)
        return dataclasses.replace(self, mean=tuple(mean), std=tuple(std))


@dataclass
class ModelConfig(_Dict):
    """Everything needed to rebuild the network."""

    _where = "model config"

    encoder_name: str = "mobilenet_v2"
    #: "imagenet" (a package that ships the weights, else smp's hub copy), a local weights file, or None.
    encoder_weights: str | None = "imagenet"
    #: Colour channels of the image (always :data:`IMAGE_CHANNELS`; kept for checkpoints of format 1).
    in_channels: int = IMAGE_CHANNELS
    #: Interactive segmentation: the network also takes guidance channels (:data:`GUIDANCE_CHANNELS`:
    #: clicks, previous mask, box); with no prompt they are zero and the model predicts automatically.
    prompts: bool = False
    num_classes: int = 3
    #: Segmentation classes: always 1 (the lesion); kept for the checkpoint format.
    seg_classes: int = 1
    task: str = "both"
    skip_connections: bool = True
    dropout: float = 0.2
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        name = str(self.encoder_name)
        if not name or len(name) > 100 or not all(c.isalnum() or c in "_.-" for c in name):
            raise ConfigError(f"encoder_name must be an encoder name ([A-Za-z0-9_.-], <= 100 characters), got {name[:100]!r}")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if not 1 <= int(self.num_classes) <= MAX_CLASSES:
            raise ConfigError(f"num_classes must be in [1, {MAX_CLASSES}], got {self.num_classes}")
        if self.task in ("both", "cls") and int(self.num_classes) < 2:
            raise ConfigError(f"num_classes must be >= 2 for task {self.task!r}, got {self.num_classes}")
        if int(self.seg_classes) != 1:
            raise ConfigError(f"seg_classes must be 1 (one foreground, the lesion, is segmented; several "
                              f"segmentation classes are not supported), got {self.seg_classes}")
        if not 0.0 <= _finite("dropout", self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.in_channels != IMAGE_CHANNELS:
            raise ConfigError(
                f"in_channels must be {IMAGE_CHANNELS}: greyscale inputs are replicated to RGB by the preprocessing"
            )
        if not 1 <= int(self.encoder_depth) <= 5:
            raise ConfigError(f"encoder_depth must be in [1, 5], got {self.encoder_depth}")
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)
        if len(self.decoder_channels) != int(self.encoder_depth):
            raise ConfigError("decoder_channels needs one entry per encoder stage (encoder_depth)")
        if any(not 1 <= c <= MAX_CHANNELS for c in self.decoder_channels):
            raise ConfigError(f"decoder_channels must be in [1, {MAX_CHANNELS}], got {list(self.decoder_channels)}")
        if self.encoder_weights in ("", "none", "None"):
            self.encoder_weights = None
        if self.encoder_weights is not None and (len(self.encoder_weights) > 4096 or "\0" in self.encoder_weights):
            raise ConfigError("encoder_weights must be 'imagenet', a file path or None")
        if self.class_names:
            self.class_names = [str(c) for c in self.class_names]
            if len(self.class_names) != int(self.num_classes):
                raise ConfigError(
                    f"{len(self.class_names)} class names given for num_classes={self.num_classes}"
                )
            if len(set(self.class_names)) != len(self.class_names):
                raise ConfigError(f"class names must be unique: {[escape(c[:60]) for c in self.class_names[:20]]}")
            bad = [c for c in self.class_names if not c.strip() or len(c) > MAX_NAME_CHARS or c != c.strip()]
            if bad:
                raise ConfigError(
                    f"class names must be non-empty single-line text without surrounding spaces "
                    f"(<= {MAX_NAME_CHARS} characters), got '{escape(bad[0][:60])}'"
                )
            for c in self.class_names:  # control, bidi-override and lone-surrogate characters (textsafe)
                try:
                    check_name(c)
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
        else:
            self.class_names = [f"class_{i}" for i in range(int(self.num_classes))]

    @property
    def guidance_channels(self) -> int:
        """How many prompt (guidance) channels follow the image channels (0 for an automatic-only model)."""
        return len(GUIDANCE_CHANNELS) if self.prompts else 0

    @property
    def input_channels(self) -> int:
        """Channels of the network's input tensor: the image's, then the guidance channels."""
        return IMAGE_CHANNELS + self.guidance_channels

    def with_classes(self, class_names: list[str]) -> ModelConfig:
        """A copy for a dataset with these classes (fewer than two: a placeholder pair, for seg-only data)."""
        names = [str(c) for c in class_names]
        if len(names) >= 2:
            return dataclasses.replace(self, num_classes=len(names), class_names=names)
        return dataclasses.replace(self, num_classes=2, class_names=[])


@dataclass
class AugmentConfig(_Dict):
    """Joint image+mask augmentation (the paper's set: rotation, flips, shear)."""

    _where = "augment config"

    enabled: bool = True
    rotation_degrees: float = 15.0
    hflip: bool = True
    #: Off by default: in ultrasound (and most radiology) the vertical axis is depth, never flipped.
    vflip: bool = False
    shear_degrees: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= _finite("rotation_degrees", self.rotation_degrees) <= 180:
            raise ConfigError(f"rotation_degrees must be in [0, 180], got {self.rotation_degrees}")
        if not 0 <= _finite("shear_degrees", self.shear_degrees) < 90:
            raise ConfigError(f"shear_degrees must be in [0, 90), got {self.shear_degrees}")


@dataclass
class DataConfig(_Dict):
    """Where the data is and how it is split, cached and loaded."""

    _where = "data config"

    root: str = ""
    layout: str = "auto"
    #: Refuse a dataset with any problem (True) or skip the bad samples and report them (False).
    strict: bool = False
    #: Validation images: they choose the best epoch and the post-processing.
    val_fraction: float = 0.15
    #: Held-out test images (0 by default: every image not validating trains; estimate generalisation
    #: with ``--test-fraction`` or k-fold ``mtunet experiment``, see docs/results.md).
    test_fraction: float = 0.0
    n_folds: int = 5
    fold: int | None = None
    seed: int = 0
    split_file: str | None = None
    #: Keep decoded, resized images in memory (decoding happens once, not every epoch).
    cache: bool = True
    num_workers: int = 0
    #: Draw training batches class-balanced (with replacement) instead of shuffling.
    balanced_sampling: bool = False
    max_samples: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: Options of the layout reader, e.g. PANDA's ``{"level": 1, "patch_size": 256}`` (the CLI's
    #: ``--layout-option level=1``); the reader refuses options it does not take, naming those it does.
    layout_options: dict[str, LayoutOption] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.augment = AugmentConfig.from_dict(self.augment)
        self.layout_options = _layout_options(self.layout_options)
        for name in ("val_fraction", "test_fraction"):
            v = _finite(name, getattr(self, name))
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {v}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must leave some training data")
        if not 2 <= int(self.n_folds) <= 100:
            raise ConfigError(f"n_folds must be in [2, 100], got {self.n_folds}")
        if self.fold is not None and not 0 <= int(self.fold) < int(self.n_folds):
            raise ConfigError(f"fold must be in 0..{int(self.n_folds) - 1}, got {self.fold}")
        if self.max_samples is not None and int(self.max_samples) < 2:
            raise ConfigError(f"max_samples must be >= 2 (or unset for all), got {self.max_samples}")
        if not 0 <= int(self.num_workers) <= 256:
            raise ConfigError(f"num_workers must be in [0, 256], got {self.num_workers}")
        if int(self.seed) < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not out["layout_options"]:  # saved only when set: runs without them read as before in older versions
            del out["layout_options"]
        return out

    @property
    def holds_out(self) -> bool:
        """Whether this config carves any validation or test images out of the dataset."""
        return self.val_fraction > 0 or self.test_fraction > 0 or self.fold is not None or bool(self.split_file)


def _layout_options(options: Any) -> dict[str, LayoutOption]:
    if not isinstance(options, dict) or not _type_ok(options, dict[str, LayoutOption]):
        raise ConfigError(f"layout_options must map option names to numbers, text or true/false, got {options!r:.80}")
    if len(options) > MAX_LAYOUT_OPTIONS:
        raise ConfigError(f"layout_options: at most {MAX_LAYOUT_OPTIONS} options, got {len(options)}")
    for name, value in options.items():
        if not name.isidentifier():
            raise ConfigError(f"layout_options: {escape(name[:60])!r} is not an option name (letters, digits, _)")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"layout_options: {name} must be finite, got {value}")
        if isinstance(value, str) and len(value) > MAX_NAME_CHARS:
            raise ConfigError(f"layout_options: {name} is longer than {MAX_NAME_CHARS} characters")
    return dict(options)


def parse_layout_options(text: str) -> dict[str, LayoutOption]:
    """``"level=1, patch-size=512"`` (the CLI's ``--layout-option``, the Train widget's field): each value as an
    integer, a number, true/false, none or text; a later option of the same name wins.  ConfigError names the
    item that is not ``NAME=VALUE``."""
    out: dict[str, LayoutOption] = {}
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        name, sep, raw = item.partition("=")
        name, raw = name.strip().replace("-", "_"), raw.strip()
        if not sep or not name.isidentifier():
            raise ConfigError(f"layout options: expected NAME=VALUE (e.g. level=1), got {item!r}")
        value: LayoutOption = raw
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
        if isinstance(value, str) and raw.lower() in ("true", "false", "none"):
            value = {"true": True, "false": False, "none": None}[raw.lower()]
        out[name] = value
    return _layout_options(out)


@dataclass
class TrainConfig(_Dict):
    """Optimisation settings: the paper's (Adam 1e-3, loss weights 5:1, class-balanced CE) with the
    recipe study's changes (docs/results.md): batch 8 (4x the optimisation steps of 32 on small
    datasets), a one-epoch warm-up then cosine decay to 0 (the epochs set the budget: no early
    stopping), Dice + BCE for the masks."""

    _where = "train config"

    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    w_seg: float = 5.0
    w_cls: float = 1.0
    seg_loss: str = "dice_bce"  # "bce" (the paper) or "dice_bce"
    class_weights: str | None = "balanced"  # sklearn's "balanced" or None
    early_stopping_patience: int | None = None
    monitor: str = "val_loss"
    lr_schedule: str | None = "cosine"  # None, "plateau" or "cosine" (per step, to 0 at the end)
    #: The encoder's learning rate is ``lr * encoder_lr_scale`` (< 1 keeps pretrained features).
    encoder_lr_scale: float = 1.0
    #: Linear learning-rate warm-up over this many epochs (fractions allowed).
    warmup_epochs: float = 1.0
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    deterministic: bool = False
    #: After each epoch, re-estimate BatchNorm statistics on up to this many
    #: training batches (precise BN; 0 = off).  Useful with a constant, high
    #: learning rate, where running statistics lag behind the weights; with the
    #: default cosine decay they converge by the end, and precise BN would cost
    #: a third of an epoch's time per 32 batches.
    bn_recalibration_batches: int = 0

    def __post_init__(self) -> None:
        if not 0 <= int(self.bn_recalibration_batches) <= 10_000:
            raise ConfigError(f"bn_recalibration_batches must be in [0, 10000], got {self.bn_recalibration_batches}")
        if not 1 <= int(self.epochs) <= MAX_EPOCHS:
            raise ConfigError(f"epochs must be in [1, {MAX_EPOCHS}], got {self.epochs}")
        if not 1 <= int(self.batch_size) <= MAX_BATCH:
            raise ConfigError(f"batch_size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        if not 0 < _finite("lr", self.lr) <= 10:
            raise ConfigError(f"lr must be in (0, 10], got {self.lr}")
        if _finite("weight_decay", self.weight_decay) < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        ws, wc = _finite("w_seg", self.w_seg), _finite("w_cls", self.w_cls)
        if ws < 0 or wc < 0 or ws + wc == 0:
            raise ConfigError(f"loss weights must be >= 0 and not both 0, got {self.w_seg}:{self.w_cls}")
        if self.seg_loss not in ("bce", "dice_bce"):
            raise ConfigError(f"seg_loss must be 'bce' or 'dice_bce', got {self.seg_loss!r}")
        if self.class_weights not in (None, "balanced"):
            raise ConfigError(f"class_weights must be 'balanced' or None, got {self.class_weights!r}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {sorted(MONITORS)}, got {self.monitor!r}")
        if self.early_stopping_patience is not None and int(self.early_stopping_patience) < 1:
            raise ConfigError(f"early_stopping_patience must be >= 1 (or None for off), got {self.early_stopping_patience}")
        if not 0.0 <= _finite("encoder_lr_scale", self.encoder_lr_scale) <= 10.0:
            raise ConfigError(f"encoder_lr_scale must be in [0, 10], got {self.encoder_lr_scale}")
        warm = _finite("warmup_epochs", self.warmup_epochs)
        if not 0 <= warm <= MAX_EPOCHS:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.lr_schedule not in (None, "plateau", "cosine"):
            raise ConfigError(f"lr_schedule must be None, 'plateau' or 'cosine', got {self.lr_schedule!r}")
        if self.grad_clip is not None and not _finite("grad_clip", self.grad_clip) > 0:
            raise ConfigError(f"grad_clip must be > 0 (or None), got {self.grad_clip}")
        if int(self.seed) < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


#: How fine-tuning treats BatchNorm statistics (see :attr:`FinetuneConfig.adapt_bn`).
ADAPT_BN: tuple[str, ...] = ("auto", "keep", "new", "mix")
#: What ``adapt_bn="auto"`` means when there are images of the new scanner to adapt to (uncorrected images
#: given: the user asked for them to be used, or adapt-only fine-tuning).  The fine-tuning study found "new"
#: the better of the adapting modes on its select set, but below not adapting at all (docs/results.md), so
#: nothing adapts unless uncorrected images are given.
AUTO_ADAPT_BN = "new"


@dataclass
class FinetuneConfig(_Dict):
    """Fine-tuning a trained model on a few corrected samples: one set of defaults for every front end.

    The defaults were chosen with ``mtunet experiment --study finetune`` (see
    docs/results.md): the number of optimisation steps scales with the number
    of new samples, base samples are replayed against forgetting, and the
    few corrections are augmented.
    """

    _where = "fine-tune config"

    #: Optimisation steps per new sample (total steps = clamp(steps_per_sample * n_new, min_steps, max_steps)).
    #: 10 steps at lr 3e-4 with frozen BatchNorm statistics and 1:1 replay won the fine-tuning study
    #: (docs/results.md): more gain on a shifted scanner than 6 steps at 1e-4, and no forgetting; the second
    #: study (random shifts, interactive bases, a fresh report set) kept them: median +0.025 Dice on new shifts,
    #: where re-estimating BatchNorm statistics on uncorrected images gained +0.008.
    steps_per_sample: float = 10.0
    min_steps: int = 20
    max_steps: int = 300
    batch_size: int = 8
    lr: float = 3e-4
    #: Encoder learning rate as a fraction of ``lr`` (0 = frozen encoder).
    encoder_lr_scale: float = 1.0
    #: Keep BatchNorm statistics of the base model (eval mode) while fine-tuning.
    freeze_bn: bool = True
    #: Replayed base samples per new sample in each batch mix (0 = no replay).
    replay_ratio: float = 1.0
    augment: bool = True
    #: Fraction of the new samples held back (not trained on) to show before/after metrics on
    #: images the fine-tuning never saw; none are held back when fewer than ``min_check`` + 2 are given.
    check_fraction: float = 0.2
    min_check: int = 2
    #: Images of the base model's own held-out split scored before/after (forgetting), when available.
    base_check_images: int = 40
    #: BatchNorm statistics before fine-tuning: "keep" the base model's, re-estimate them on the "new" images
    #: (the corrections and any uncorrected images of the same scanner), or on a "mix" of the new images and as
    #: many replayed base images (the old scanner keeps its say); "auto": :data:`AUTO_ADAPT_BN` when
    #: uncorrected images are given (or nothing is trained), else "keep" (:meth:`bn_mode`).
    adapt_bn: str = "auto"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0 <= _finite("check_fraction", self.check_fraction) < 1:
            raise ConfigError(f"check_fraction must be in [0, 1), got {self.check_fraction}")
        if int(self.min_check) < 1 or int(self.base_check_images) < 0:
            raise ConfigError("min_check must be >= 1 and base_check_images >= 0")
        if not 0 <= _finite("steps_per_sample", self.steps_per_sample) <= 1000:
            raise ConfigError(f"steps_per_sample must be in [0, 1000] (0: adapt the BatchNorm statistics only), "
                              f"got {self.steps_per_sample}")
        if self.steps_per_sample == 0 and self.adapt_bn == "keep":
            raise ConfigError("steps_per_sample 0 trains nothing: it needs adapt_bn 'new' or 'mix' (adapt only)")
        if not 1 <= int(self.min_steps) <= int(self.max_steps) <= 100_000:
            raise ConfigError(f"need 1 <= min_steps <= max_steps <= 100000, got {self.min_steps}, {self.max_steps}")
        if not 1 <= int(self.batch_size) <= MAX_BATCH:
            raise ConfigError(f"batch_size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        if not 0 < _finite("lr", self.lr) <= 10:
            raise ConfigError(f"lr must be in (0, 10], got {self.lr}")
        if not 0 <= _finite("encoder_lr_scale", self.encoder_lr_scale) <= 10:
            raise ConfigError(f"encoder_lr_scale must be in [0, 10], got {self.encoder_lr_scale}")
        if not 0 <= _finite("replay_ratio", self.replay_ratio) <= 100:
            raise ConfigError(f"replay_ratio must be in [0, 100], got {self.replay_ratio}")
        if self.adapt_bn not in ADAPT_BN:
            raise ConfigError(f"adapt_bn must be one of {ADAPT_BN}, got {self.adapt_bn!r}")

    def bn_mode(self, uncorrected: bool) -> str:
        """The BatchNorm treatment of a fine-tuning run: ``adapt_bn`` with "auto" resolved (``uncorrected``:
        whether uncorrected images of the new scanner were given)."""
        if self.adapt_bn != "auto":
            return self.adapt_bn
        return AUTO_ADAPT_BN if uncorrected or self.steps_per_sample == 0 else "keep"

    def n_check(self, n_new: int) -> int:
        """How many of ``n_new`` samples are held back for the before/after check."""
        if self.check_fraction <= 0 or n_new < int(self.min_check) + 2:
            return 0
        return max(int(self.min_check), int(round(self.check_fraction * n_new)))

    def steps_for(self, n_new: int) -> int:
        """Optimisation steps for ``n_new`` corrected samples (0: adapt the BatchNorm statistics only)."""
        if self.steps_per_sample == 0:
            return 0
        return int(min(self.max_steps, max(self.min_steps, round(self.steps_per_sample * max(1, n_new)))))


@dataclass
class Postprocessing(_Dict):
    """How a trained model's outputs become the reported mask: chosen on the validation split at the end
    of training (:func:`napari_mtunet.workflows.calibrate.calibrate_postprocessing`), saved in the checkpoint,
    applied by the Predictor and by evaluation alike."""

    _where = "postprocessing"

    #: Lesions (connected components) smaller than this fraction of the image are removed
    #: (whole-image modes; not in tiled prediction of large images).
    min_lesion_fraction: float = 0.0
    #: Average the outputs of the image and its left-right mirror (test-time augmentation).
    hflip_tta: bool = False
    #: The class that means "no lesion" (BUSI's ``normal``), when the two heads are made to agree: an
    #: image whose final mask is empty gets this class, one with a lesion never does (the class
    #: probabilities are restricted to the classes consistent with the mask and renormalised).  Chosen
    #: on the validation split only when that class's masks are all empty there and it raises the
    #: validation balanced accuracy (whole-image modes; not in tiled prediction).
    no_lesion_class: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= _finite("min_lesion_fraction", self.min_lesion_fraction) <= 0.5:
            raise ConfigError(f"min_lesion_fraction must be in [0, 0.5], got {self.min_lesion_fraction}")
        if self.no_lesion_class is not None and (not isinstance(self.no_lesion_class, str)
                                                 or not self.no_lesion_class.strip()):
            raise ConfigError(f"no_lesion_class must be a class name or null, got {self.no_lesion_class!r}")


@dataclass
class InteractiveConfig(_Dict):
    """Interactive segmentation (a model with ``ModelConfig.prompts``): how training simulates a user and how
    prompts are turned into the network's input.  Saved in the run config, so the Predictor encodes and
    zooms exactly as training did (see :mod:`napari_mtunet.prompts`).

    Training adds, per image and epoch, ``prompted_per_image`` prompted views beside the automatic one
    (which keeps the automatic mode and the class head trained as without prompts): a box prompt
    (``box_share`` of them), or clicks, either on the whole image (``first_click_share``: the first
    click, nothing known yet) or zoomed on the object with the model's own previous mask fed back.
    Each prompted view gets up to ``max_iterations`` corrective clicks, placed in the error region of
    the model's own prediction (RITM / DeepEdit style).
    """

    _where = "interactive config"

    #: Prompted training views per image and epoch (0 = none: prompts never trained).
    prompted_per_image: float = 2.0
    #: Share of the prompted views prompted by a (jittered) box; the rest by clicks.
    box_share: float = 0.4
    #: Share of the click views that show the whole image with first click(s) only (no previous mask).
    first_click_share: float = 0.3
    #: Share of the zoomed click views whose previous mask is a corrupted copy of the truth (grown, shrunk,
    #: shifted, cut, a false blob, far too large) with the clicks a user puts on its errors: they teach the
    #: network to follow clicks against a wrong previous mask, at no extra forward pass.
    synthetic_share: float = 0.6
    #: Simulated corrective clicks per prompted view: 0..max_iterations, each after a no-gradient pass.
    max_iterations: int = 3
    #: Box sides moved by up to this fraction of the box size (a user's box is not exact).
    box_jitter: float = 0.1
    #: Click disks' radius in pixels of the network input.
    click_radius: int = 3
    #: The region run for a prompt: the prompts' extent (box, clicks, previous mask) grown by this fraction.
    zoom_margin: float = 0.4
    #: The zoomed region's side is at least this fraction of the image's longer side.
    min_zoom: float = 0.15
    #: Training crops come from images cached at up to this many times the model's input size.
    source_factor: int = 4
    #: Prediction: a first click without a previous mask runs the whole image, then zooms on that result
    #: and runs again (two passes) instead of keeping the whole-image result.
    refine_first_click: bool = True
    #: Prediction: clicked pixels end on the clicked side (positive inside the mask, negative outside) and
    #: only the parts of the mask the prompts point at are kept.
    enforce_clicks: bool = True
    #: Prediction: when the mask reaches the edge of the region that was run (and the image goes on), the
    #: region grows around the mask and is run again (at most twice).
    grow_region: bool = True
    #: Prediction: a box prompt without a previous mask starts from the ellipse inscribed in the box (training
    #: shows half the box views that way), so the network corrects a good guess instead of starting empty.
    box_prior: bool = True
    #: Prediction: prompted passes also average with the mirror image when the model's post-processing chose
    #: left-right test-time augmentation (twice the time per click).
    tta: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= _finite("prompted_per_image", self.prompted_per_image) <= 4.0:
            raise ConfigError(f"prompted_per_image must be in [0, 4], got {self.prompted_per_image}")
        for name in ("box_share", "first_click_share", "synthetic_share"):
            if not 0.0 <= _finite(name, getattr(self, name)) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= int(self.max_iterations) <= 20:
            raise ConfigError(f"max_iterations must be in [0, 20], got {self.max_iterations}")
        if not 0.0 <= _finite("box_jitter", self.box_jitter) <= 0.5:
            raise ConfigError(f"box_jitter must be in [0, 0.5], got {self.box_jitter}")
        if not 1 <= int(self.click_radius) <= 64:
            raise ConfigError(f"click_radius must be in [1, 64] pixels, got {self.click_radius}")
        if not 0.0 <= _finite("zoom_margin", self.zoom_margin) <= 4.0:
            raise ConfigError(f"zoom_margin must be in [0, 4], got {self.zoom_margin}")
        if not 0.0 < _finite("min_zoom", self.min_zoom) <= 1.0:
            raise ConfigError(f"min_zoom must be in (0, 1], got {self.min_zoom}")
        if not 1 <= int(self.source_factor) <= 16:
            raise ConfigError(f"source_factor must be in [1, 16], got {self.source_factor}")


# --------------------------------------------------------------------------- the run


RUN_CONFIG_VERSION = 3

#: Named recipes: overrides of the dataclass defaults, by part.  ``cpu`` (the default of ``mtunet train`` and of
#: the Train widget) is the recipe chosen for 2 CPU cores; ``gpu`` follows the paper's budget (256 px, 50 epochs,
#: batch 32, early stopping).  docs/results.md has the studies that chose them and what they reach.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        "model": {"encoder_name": "timm-tf_efficientnet_lite0", "encoder_weights": "imagenet", "prompts": True},
        "preprocessing": {"image_size": 128},
        "train": {"epochs": 20, "batch_size": 8},
    },
    "gpu": {
        "model": {"encoder_name": "timm-tf_efficientnet_lite0", "encoder_weights": "imagenet", "prompts": True},
        "preprocessing": {"image_size": 256},
        "train": {"epochs": 50, "batch_size": 32, "early_stopping_patience": 10},
    },
}
DEFAULT_PRESET = "cpu"


@dataclass
class RunConfig(_Dict):
    """Everything one training run needs, validated together; saved whole in its checkpoints."""

    _where = "run config"

    model: ModelConfig = field(default_factory=ModelConfig)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocessing: Postprocessing = field(default_factory=Postprocessing)
    interactive: InteractiveConfig = field(default_factory=InteractiveConfig)
    #: The named recipe (:data:`PRESETS`) this run started from, recorded with it (None: none).
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        self.interactive = InteractiveConfig.from_dict(self.interactive)
        self.model = ModelConfig.from_dict(self.model)
        self.preprocessing = Preprocessing.from_dict(self.preprocessing)
        self.data = DataConfig.from_dict(self.data)
        self.train = TrainConfig.from_dict(self.train)
        self.postprocessing = Postprocessing.from_dict(self.postprocessing)
        self.validate()

    def validate(self) -> None:
        """Rules that span the parts; raises :class:`ConfigError`."""
        task = self.model.task
        monitor = self.train.monitor
        if monitor in _MONITOR_TASKS and task not in _MONITOR_TASKS[monitor]:
            head = "segmentation" if task == "cls" else "classification"
            raise ConfigError(f"monitor {monitor!r} is not available for task {task!r} (it needs the {head} head); "
                              "choose another monitor or task")
        t = self.train
        if task == "seg" and t.w_seg <= 0:
            raise ConfigError("task 'seg' trains only the segmentation loss: w_seg must be > 0")
        if task == "cls" and t.w_cls <= 0:
            raise ConfigError("task 'cls' trains only the classification loss: w_cls must be > 0")
        if self.model.prompts:
            if not self.preprocessing.resize:
                raise ConfigError("interactive models (prompts) are trained on whole images resized to the input "
                                  "size; native-resolution (patch) training does not support prompts")
            if self.model.task == "cls":
                raise ConfigError("interactive models (prompts) segment one object: they need the segmentation "
                                  "head (task 'both' or 'seg')")
        nl = self.postprocessing.no_lesion_class
        if nl is not None:
            if task != "both":
                raise ConfigError(f"postprocessing.no_lesion_class needs both heads (task 'both'), not task {task!r}")
            if self.model.class_names and nl not in self.model.class_names:
                raise ConfigError(f"postprocessing.no_lesion_class {nl!r} is not one of the model's classes "
                                  f"{self.model.class_names}")

    # ------------------------------------------------------------------ derived values

    @property
    def effective_loss_weights(self) -> tuple[float, float]:
        """``(w_seg, w_cls)`` as the loss uses them: the weight of a head the task lacks is 0."""
        task = self.model.task
        return (self.train.w_seg if task != "cls" else 0.0, self.train.w_cls if task != "seg" else 0.0)

    @property
    def monitor(self) -> str:
        """The monitored quantity: ``train_loss`` when the run has no validation images."""
        if self.train.monitor.startswith("val_") and not self.has_validation:
            return "train_loss"
        return self.train.monitor

    @property
    def has_validation(self) -> bool:
        d = self.data
        return d.val_fraction > 0 or bool(d.split_file)

    def resolved(self) -> RunConfig:
        """A copy with everything derived filled in (normalisation from the encoder, loss weights as used)."""
        ws, wc = self.effective_loss_weights
        return RunConfig(
            model=dataclasses.replace(self.model),
            preprocessing=self.preprocessing.for_encoder(self.model.encoder_name),
            data=DataConfig.from_dict(self.data.to_dict()),
            train=dataclasses.replace(self.train, w_seg=ws, w_cls=wc),
            postprocessing=dataclasses.replace(self.postprocessing),
            interactive=dataclasses.replace(self.interactive),
            preset=self.preset,
        )

    def with_classes(self, class_names: list[str]) -> RunConfig:
        return dataclasses.replace(self, model=self.model.with_classes(class_names))

    @classmethod
    def from_preset(cls, name: str = DEFAULT_PRESET) -> RunConfig:
        """The run config of a named recipe (:data:`PRESETS`): what ``mtunet train`` and the Train widget start
        from (``--preset``); every option a user gives then overrides it."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        d = cls().to_dict()
        for part, values in PRESETS[name].items():
            d[part].update(values)
        d["preset"] = name
        return cls.from_dict(d)

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return {"version": RUN_CONFIG_VERSION, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        if isinstance(data, dict) and "version" in data:
            data = dict(data)
            version = data.pop("version")
            if not isinstance(version, int) or isinstance(version, bool) or version > RUN_CONFIG_VERSION:
                raise ConfigError(
                    f"run config version {version!r} is newer than this napari-mtunet understands "
                    f"({RUN_CONFIG_VERSION}); upgrade napari-mtunet"
                )
        return _from_dict(cls, data, where=cls._where)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> RunConfig:
        """The run config of a checkpoint's metadata; first-format checkpoints are migrated.

        Format 1 stored the parts apart (``model``, ``preprocessing``,
        ``training.train_config``, ``training.data_config``); missing parts
        take today's defaults.
        """
        if isinstance(meta.get("run"), dict):
            return cls.from_dict(meta["run"])
        training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
        train = training.get("train_config") or {}
        data = training.get("data_config") or {}
        if isinstance(train, dict):
            train = {k: v for k, v in train.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
        run = cls(
            model=ModelConfig.from_dict(meta.get("model", {})),
            preprocessing=Preprocessing.from_dict(meta.get("preprocessing", {})),
            data=DataConfig.from_dict(data) if isinstance(data, dict) else DataConfig(),
            train=TrainConfig.from_dict(train) if isinstance(train, dict) else TrainConfig(),
        )
        return run
