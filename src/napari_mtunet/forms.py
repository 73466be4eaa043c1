"""What the napari widgets' forms hold, and how it becomes a run configuration: pure functions, no Qt.

A form is a flat dataclass of the values the controls show (text for the
learning rate, 0 for "all samples" ...).  Its defaults come from
the default preset (:meth:`~napari_mtunet.config.RunConfig.from_preset`) / :class:`~napari_mtunet.config.FinetuneConfig`,
so the widgets and the CLI start from the same values; ``to_run()`` turns a
form into a validated run configuration with messages a user can act on.
Forms are also what a widget remembers between openings (``to_dict`` /
``from_dict``, tolerant of stale or damaged files).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_PRESET,
    DOCUMENTED_ENCODERS,
    PRESETS,
    AugmentConfig,
    DataConfig,
    ModelConfig,
    Preprocessing,
    RunConfig,
    TrainConfig,
    parse_layout_options,
)

D = RunConfig.from_preset()  # the Train widget starts where `mtunet train` does: the default preset

#: Encoders offered by name in the Train widget (any smp encoder name can be typed).
ENCODERS: tuple[str, ...] = (*DOCUMENTED_ENCODERS, "resnet18", "resnet34", "efficientnet-b0")
#: Encoder weights choices.
WEIGHTS: tuple[str, ...] = ("imagenet", "none", "local file")
#: The dataset layouts by name, as :data:`napari_mtunet.data.layouts.LAYOUTS` lists them (a test keeps the two
#: equal): importing the layout readers takes ~0.2 s, too long for napari's GUI thread when a dock opens.
LAYOUT_NAMES: tuple[str, ...] = ("panda", "siim", "isic", "lgg", "busi", "generic", "folders")
ENCODER_NOTES: dict[str, str] = {
    "timm-tf_efficientnet_lite0": "ImageNet weights ship with napari-mtunet: pretrained training works offline",
    "mobilenet_v2": "the paper's encoder; ImageNet weights are downloaded once from the model hub",
    "vgg16": "the paper's encoder; ImageNet weights are downloaded once from the model hub",
}


def default_output_root() -> str:
    """Where runs go unless the user chooses: ``~/mtunet-runs``."""
    return str(Path(os.path.expanduser("~")) / "mtunet-runs")


def _number(text: Any, what: str) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None


@dataclass
class TrainForm:
    """The Train widget's fields."""

    root: str = ""
    #: the recipe (config.PRESETS) the model and optimisation fields started from
    preset: str = DEFAULT_PRESET
    layout: str = D.data.layout
    #: the layout reader's options, "level=1, patch_size=512" (DataConfig.layout_options)
    layout_options: str = ""
    strict: bool = D.data.strict
    val_fraction: float = D.data.val_fraction
    test_fraction: float = D.data.test_fraction
    seed: int = D.data.seed
    max_samples: int = 0  # 0 = all
    augment: bool = D.data.augment.enabled
    encoder: str = D.model.encoder_name
    weights: str = "imagenet"  # one of WEIGHTS
    weights_file: str = ""
    task: str = D.model.task
    #: train for click and box prompts too (``model.prompts``; the CLI's ``--interactive``)
    interactive: bool = D.model.prompts
    image_size: int = D.preprocessing.image_size
    w_seg: float = D.train.w_seg
    w_cls: float = D.train.w_cls
    epochs: int = D.train.epochs
    batch_size: int = D.train.batch_size
    lr: str = f"{D.train.lr:g}"
    patience: int = D.train.early_stopping_patience or 0  # 0 = off
    device: str = D.train.device
    out_root: str = ""  # "" = default_output_root()

    def to_run(self) -> RunConfig:
        """The run configuration these fields describe (``ValueError`` with a clear message otherwise)."""
        if not self.root.strip():
            raise ValueError("choose a dataset folder")
        if self.weights == "local file":
            weights: str | None = self.weights_file.strip()
            if not weights or not Path(weights).is_file():
                raise ValueError(f"encoder weights file not found: {weights!r}")
        elif self.weights == "none":
            weights = None
        elif self.weights == "imagenet":
            weights = "imagenet"
        else:
            raise ValueError(f"encoder weights must be one of {WEIGHTS}, got {self.weights!r}")
        lr = _number(self.lr, "learning rate")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        base = RunConfig.from_preset(self.preset)
        run = RunConfig(
            model=ModelConfig(**{**base.model.to_dict(), "encoder_name": self.encoder.strip(),
                                 "encoder_weights": weights, "task": self.task,
                                 "prompts": bool(self.interactive)}),
            preprocessing=Preprocessing(image_size=int(self.image_size)),
            data=DataConfig(**{**base.data.to_dict(), "root": self.root.strip(), "layout": self.layout,
                               "strict": bool(self.strict),
                               "layout_options": parse_layout_options(self.layout_options),
                               "val_fraction": float(self.val_fraction), "test_fraction": float(self.test_fraction),
                               "seed": int(self.seed), "max_samples": int(self.max_samples) or None,
                               "augment": AugmentConfig(**{**base.data.augment.to_dict(),
                                                           "enabled": bool(self.augment)})}),
            train=TrainConfig(**{**base.train.to_dict(), "epochs": int(self.epochs),
                                 "batch_size": int(self.batch_size), "lr": lr, "w_seg": float(self.w_seg),
                                 "w_cls": float(self.w_cls),
                                 "early_stopping_patience": int(self.patience) or None,
                                 "device": self.device, "seed": int(self.seed)}),
            interactive=base.interactive,
            preset=base.preset,
        )
        return run

    @classmethod
    def for_preset(cls, name: str, like: TrainForm | None = None) -> TrainForm:
        """``like`` (data, split, output ...) with the model and optimisation fields of the preset ``name``."""
        run = RunConfig.from_preset(name)
        recipe = {"preset": name, "encoder": run.model.encoder_name,
                  "weights": "imagenet" if run.model.encoder_weights == "imagenet" else "none",
                  "weights_file": "", "task": run.model.task, "interactive": run.model.prompts,
                  "image_size": run.preprocessing.image_size, "w_seg": run.train.w_seg, "w_cls": run.train.w_cls,
                  "epochs": run.train.epochs, "batch_size": run.train.batch_size, "lr": f"{run.train.lr:g}",
                  "patience": run.train.early_stopping_patience or 0}
        return dataclasses.replace(like or cls(), **recipe)

    @staticmethod
    def layout_options_text(options: dict[str, Any]) -> str:
        """DataConfig.layout_options as the form's field shows them."""
        words = {True: "true", False: "false", None: "none"}
        return ", ".join(f"{k}={words[v] if v is None or isinstance(v, bool) else v}" for k, v in options.items())

    def run_folder(self, now: _dt.datetime | None = None) -> Path:
        """A new folder for this run under the output root (nothing existing is reused)."""
        from .paths import unique_path

        stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
        root = Path(self.out_root.strip() or default_output_root())
        return unique_path(root / f"{Path(self.root.rstrip('/')).name or 'run'}-{self.encoder.strip()}-{stamp}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> TrainForm:
        """A form from remembered values; unknown keys and values of the wrong type are ignored."""
        form = cls()
        if not isinstance(data, dict):
            return form
        for f in dataclasses.fields(cls):
            if f.name in data:
                v = data[f.name]
                default = getattr(form, f.name)
                if isinstance(default, bool):
                    ok = isinstance(v, bool)
                elif isinstance(default, (int, float)):
                    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
                else:
                    ok = isinstance(v, str)
                if ok:
                    setattr(form, f.name, type(default)(v))
        return form
