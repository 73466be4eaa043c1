"""What an experiment runs: its settings, the runs they plan and each run's configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import AugmentConfig, DataConfig, ModelConfig, Preprocessing, RunConfig, TrainConfig

WEIGHT_SWEEP: list[tuple[float, float]] = [(1, 1), (2, 1), (5, 1), (10, 1), (1, 2), (1, 5), (1, 10)]
STUDIES = ("baselines", "ablation", "weights")
#: The scalars each run records in its result.json (and results.csv).
METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "dice", "iou", "dice_lesion", "iou_lesion", "dice_global")


_D = RunConfig()


@dataclass
class ExperimentSettings:
    """The budget of an experiment; every other training setting is the project default (``RunConfig()``)."""

    dataset: str
    layout: str = "auto"
    preset: str = "paper"
    encoders: list[str] = field(default_factory=lambda: ["vgg16", "mobilenet_v2"])
    studies: list[str] = field(default_factory=lambda: list(STUDIES))
    folds: int = 5
    epochs: int = _D.train.epochs
    image_size: int = _D.preprocessing.image_size
    max_samples: int | None = None
    batch_size: int = _D.train.batch_size
    lr: float = _D.train.lr
    patience: int = _D.train.early_stopping_patience or 0
    encoder_weights: str | None = "imagenet"
    device: str = "auto"
    seed: int = 0
    n_boot: int = 1000
    augment: bool = True
    val_fraction: float = _D.data.val_fraction
    #: Run only these folds now (None: all); the report covers every finished run.
    only_folds: list[int] | None = None
    #: The ``weights`` study's w_seg:w_cls ratios (None: all of ``WEIGHT_SWEEP``).
    weight_ratios: list[tuple[float, float]] | None = None
    #: Options of the layout reader (``DataConfig.layout_options``, e.g. PANDA's ``level`` and ``patch_size``).
    layout_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [s for s in self.studies if s not in STUDIES]
        if bad:
            raise ValueError(f"unknown studies {bad}; choose from {list(STUDIES)}")
        if not self.encoders:
            raise ValueError("no encoders given")
        if self.folds < 2:
            raise ValueError(f"--folds must be >= 2, got {self.folds}")
        for ws, wc in self.weight_ratios or []:
            if ws < 0 or wc < 0 or ws + wc == 0:
                raise ValueError(f"bad task-weight ratio {ws:g}:{wc:g}; both must be >= 0 and not both 0")
        self.data_config()  # the layout options are checked as a run's would be

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change results (a resumed experiment must match them)."""
        d = asdict(self)
        for k in ("encoders", "studies", "device", "n_boot", "only_folds", "weight_ratios"):
            d.pop(k)
        if not d["layout_options"]:  # experiments from before layout options resume as they were
            d.pop("layout_options")
        d["dataset"] = str(Path(self.dataset).resolve())
        return d

    def data_config(self, **changes: Any) -> DataConfig:
        """The dataset as every run of the experiment reads it."""
        return DataConfig(root=self.dataset, layout=self.layout, max_samples=self.max_samples, seed=self.seed,
                          layout_options=dict(self.layout_options), **changes)


@dataclass
class RunSpec:
    encoder: str
    variant: str
    fold: int
    task: str
    w_seg: float
    w_cls: float
    skip: bool = True

    @property
    def key(self) -> str:
        return f"{self.encoder}/{self.variant}/fold{self.fold}"


def parse_ratios(text: str) -> list[tuple[float, float]]:
    """``"1:1,2:1"`` -> ``[(1.0, 1.0), (2.0, 1.0)]``; a clear ValueError otherwise."""
    out = []
    for part in (t.strip() for t in text.split(",")):
        if not part:
            continue
        try:
            ws, wc = (float(v) for v in part.split(":"))
        except ValueError:
            raise ValueError(f"bad task-weight ratio {part!r}; write w_seg:w_cls, e.g. 1:1,2:1") from None
        out.append((ws, wc))
    if not out:
        raise ValueError("no task-weight ratios given; write w_seg:w_cls, e.g. 1:1,2:1")
    return out


def ratio_variant(ws: float, wc: float) -> str:
    """The variant name of a w_seg:w_cls ratio (5:1 is the multi-task model, ``multi``)."""
    return "multi" if (ws, wc) == (5, 1) else f"w{ws:g}-{wc:g}"


def plan_runs(settings: ExperimentSettings) -> list[RunSpec]:
    """All runs, most important first (baselines, then ablation, then the sweep)."""
    runs: list[RunSpec] = []
    for enc in settings.encoders:
        for fold in range(settings.folds):
            runs.append(RunSpec(enc, "multi", fold, "both", 5, 1))
            if "baselines" in settings.studies:
                runs.append(RunSpec(enc, "seg_only", fold, "seg", 1, 0))
                runs.append(RunSpec(enc, "cls_only", fold, "cls", 0, 1))
        if "ablation" in settings.studies:
            runs += [RunSpec(enc, "multi_noskip", f, "both", 5, 1, skip=False) for f in range(settings.folds)]
        if "weights" in settings.studies:
            for ws, wc in settings.weight_ratios or WEIGHT_SWEEP:
                if (ws, wc) == (5, 1):
                    continue
                runs += [RunSpec(enc, ratio_variant(ws, wc), f, "both", ws, wc) for f in range(settings.folds)]
    return runs


def run_config_for(spec: RunSpec, settings: ExperimentSettings, class_names: list[str]) -> RunConfig:
    """The run configuration of one experiment run (defaults from RunConfig, budget from the settings)."""
    return RunConfig(
        model=ModelConfig(encoder_name=spec.encoder, encoder_weights=settings.encoder_weights, task=spec.task,
                          skip_connections=spec.skip).with_classes(class_names),
        preprocessing=Preprocessing(image_size=settings.image_size),
        data=settings.data_config(
            val_fraction=settings.val_fraction, test_fraction=0.0, n_folds=settings.folds, fold=spec.fold,
            augment=AugmentConfig.from_dict({**_D.data.augment.to_dict(), "enabled": settings.augment})),
        train=TrainConfig.from_dict({
            **_D.train.to_dict(), "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
            "w_seg": spec.w_seg if spec.task != "cls" else 1.0, "w_cls": spec.w_cls if spec.task != "seg" else 1.0,
            "early_stopping_patience": settings.patience if settings.patience > 0 else None,
            "device": settings.device, "seed": settings.seed + spec.fold,
        }),
    )
