"""The ``metadata["mtunet"]`` of napari layers: one home, one version.

Every layer napari-mtunet makes or reads carries one JSON-friendly record
under ``layer.metadata["mtunet"]``:

=================  =============================================================
``kind``           ``prediction`` (a model's output), ``annotation`` (the user's
                   labels), ``dataset`` / ``sample`` (ground truth), ``gradcam``
``version``        :data:`VERSION`
``source_layer``   the image layer it belongs to (predictions, annotations, Grad-CAM)
``is_stack``       whether the layer is a stack of 2-D images (one record per slice)
``class_names``    the classes, in model order
``slices``         per 2-D image: ``predicted`` + ``probabilities`` + ``lesion_fraction``
                   (the model's), ``truth`` (a dataset's label), ``corrected`` (the user's)
``model``          for predictions: ``name``, ``display``, ``path``, ``hash``, ``threshold``, ``mode``
``extra``          kind-specific details (a dataset's root, files, preview size ...)
=================  =============================================================

Predictions, ground truth and user corrections are kept apart: a correction
is stored beside the prediction, never over it, so it is always clear where
a value came from (:attr:`SliceInfo.label_source`: a class you picked or
confirmed, the dataset's, or only the model's).  Records of another version
are not read (:func:`read` returns None).  Qt-free and napari-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # numpy only in annotations: reading layer metadata needs none
    import numpy as np

META_KEY = "mtunet"
VERSION = 2
KINDS = ("prediction", "annotation", "dataset", "sample", "gradcam")


@dataclass
class SliceInfo:
    """What is known about one 2-D image of a layer, by source."""

    predicted: str | None = None
    probabilities: dict[str, float] | None = None
    lesion_fraction: float | None = None
    truth: str | None = None
    corrected: str | None = None

    @property
    def label(self) -> str | None:
        """The class to train on: the user's correction, else the ground truth, else the prediction."""
        return self.corrected or self.truth or self.predicted

    @property
    def label_source(self) -> str | None:
        """Where :attr:`label` comes from: ``confirmed`` (you picked or confirmed it), ``ground_truth`` (the
        dataset's) or ``predicted`` (only the model's: not confirmed by anyone); None without a class."""
        if self.corrected:
            return "confirmed"
        if self.truth:
            return "ground_truth"
        if self.predicted:
            return "predicted"
        return None

    def confidence(self) -> float | None:
        if self.predicted and self.probabilities and self.predicted in self.probabilities:
            return float(self.probabilities[self.predicted])
        return None


@dataclass
class LayerMeta:
    kind: str
    source_layer: str | None = None
    is_stack: bool = False
    class_names: list[str] = field(default_factory=list)
    slices: list[SliceInfo] = field(default_factory=list)
    model: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"layer metadata kind must be one of {KINDS}, got {self.kind!r}")

    def slice(self, index: int | None) -> SliceInfo | None:
        i = 0 if index is None else int(index)
        return self.slices[i] if 0 <= i < len(self.slices) else None

    def set_correction(self, index: int | None, class_name: str | None) -> None:
        """Record the user's class for slice ``index`` (beside the prediction, which is kept)."""
        i = 0 if index is None else int(index)
        while len(self.slices) <= i:
            self.slices.append(SliceInfo())
        self.slices[i].corrected = class_name or None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["version"] = VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerMeta:
        if d.get("version") != VERSION:
            raise ValueError(f"layer metadata version {d.get('version')!r} is not {VERSION}")
        fields = {k: d.get(k) for k in ("kind", "source_layer", "is_stack", "class_names", "model", "extra")}
        fields = {k: v for k, v in fields.items() if v is not None}
        slices = [SliceInfo(**{k: v for k, v in s.items() if k in SliceInfo.__dataclass_fields__})
                  for s in d.get("slices") or [] if isinstance(s, Mapping)]
        return cls(slices=slices, **fields)


# --------------------------------------------------------------------------- read / write


def read(metadata: Mapping[str, Any] | None) -> LayerMeta | None:
    """The record of a layer's ``metadata`` (None when there is none or it is unreadable)."""
    raw = (metadata or {}).get(META_KEY)
    if not isinstance(raw, Mapping):
        return None
    try:
        return LayerMeta.from_dict(raw)
    except (TypeError, ValueError):
        return None


def write(metadata: dict[str, Any], meta: LayerMeta) -> dict[str, Any]:
    metadata[META_KEY] = meta.to_dict()
    return metadata


def as_metadata(meta: LayerMeta) -> dict[str, Any]:
    """``{"mtunet": record}``: the ``metadata=`` argument for a new layer."""
    return {META_KEY: meta.to_dict()}


# --------------------------------------------------------------------------- constructors


def model_record(info: Any, *, threshold: float, mode: str) -> dict[str, Any]:
    """How a prediction names the model that made it (``display``: the run folder and file, e.g. ``busi-lite0/best``)."""
    path = getattr(info, "path", None)
    name = getattr(info, "name", None) or "model"
    display = f"{path.parent.name}/{path.stem}" if path is not None and path.parent.name else str(name)
    return {"name": name, "display": display, "path": str(path) if path is not None else None,
            "hash": getattr(info, "short_hash", None), "threshold": float(threshold), "mode": mode}


def prediction(preds: Sequence[Any], *, source: str, is_stack: bool, info: Any, mode: str) -> LayerMeta:
    """The record of a Labels layer holding ``preds`` (:class:`~napari_mtunet.inference.Prediction`)."""
    first = preds[0]
    slices = []
    for p in preds:
        probs = None
        if p.class_probabilities is not None:
            probs = {n: float(v) for n, v in zip(p.class_names, p.class_probabilities)}
        slices.append(SliceInfo(predicted=p.class_name, probabilities=probs,
                                lesion_fraction=float((p.mask > 0).mean()) if p.mask is not None else None))
    return LayerMeta(kind="prediction", source_layer=source, is_stack=is_stack, class_names=list(first.class_names),
                     slices=slices, model=model_record(info, threshold=first.threshold, mode=mode))


def ground_truth(classes: Sequence[str | None], class_names: Sequence[str], *, kind: str = "dataset",
                 is_stack: bool = True, extra: dict[str, Any] | None = None) -> LayerMeta:
    return LayerMeta(kind=kind, is_stack=is_stack, class_names=list(class_names),
                     slices=[SliceInfo(truth=c) for c in classes], extra=dict(extra or {}))


def annotation(source: str, n_slices: int, class_names: Sequence[str], *, is_stack: bool,
               from_prediction: LayerMeta | None = None) -> LayerMeta:
    """A new annotation layer for image ``source``; starts from a prediction's classes when given."""
    slices = [SliceInfo() for _ in range(n_slices)]
    if from_prediction is not None:
        for s, p in zip(slices, from_prediction.slices):
            s.predicted, s.probabilities = p.predicted, p.probabilities
    return LayerMeta(kind="annotation", source_layer=source, is_stack=is_stack, class_names=list(class_names),
                     slices=slices, model=from_prediction.model if from_prediction is not None else None)


def gradcam(source: str, model: dict[str, Any] | None = None) -> LayerMeta:
    """The record of a Grad-CAM heat map of image ``source`` made by ``model`` (a :func:`model_record`)."""
    return LayerMeta(kind="gradcam", source_layer=source, model=dict(model) if model else None)


def describe_slice(info: SliceInfo | None) -> str:
    """A one-line text saying each value's source, e.g. ``predicted malignant 80% · corrected benign``."""
    if info is None:
        return "no class for this image"
    parts = []
    if info.predicted:
        conf = info.confidence()
        parts.append(f"predicted {info.predicted}" + (f" {conf:.0%}" if conf is not None else ""))
    if info.truth:
        parts.append(f"ground truth {info.truth}")
    if info.corrected:
        parts.append(f"your class {info.corrected}")
    return " · ".join(parts) if parts else "no class for this image"


# --------------------------------------------------------------------------- a predicted layer


@dataclass
class LayerPrediction:
    """A layer's prediction as the Predict widget shows it: mask, record, Grad-CAM (made in the compute process;
    defined here, in a light module, so that napari's process can receive it without importing the workflows)."""

    name: str  # the image layer's name
    mask: np.ndarray | None  # uint8, the image's size (a stack: one mask per slice)
    record: LayerMeta
    cam: np.ndarray | None
    seconds: float
    cam_scale: tuple[float, float] = (1.0, 1.0)  # image pixels per Grad-CAM pixel (rows, columns)

    def summary(self) -> str:
        """What was predicted, in words (explains an empty mask beside a lesion class)."""
        rec = self.record
        classes = [s.predicted for s in rec.slices if s.predicted]
        empty = [i for i, s in enumerate(rec.slices) if s.lesion_fraction == 0.0]
        thr = (rec.model or {}).get("threshold", 0.5)
        if not classes:
            text = "segmentation only"
        elif len(classes) == 1:
            s = rec.slices[0]
            conf = s.confidence()
            text = f"class {s.predicted}" + (f" ({conf:.0%})" if conf is not None else "")
        else:
            counts: dict[str, int] = {}
            for c in classes:
                counts[c] = counts.get(c, 0) + 1
            text = f"{len(classes)} slices: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        if self.mask is not None and empty:
            lesion_class = [i for i in empty if rec.slices[i].predicted not in (None, "normal")]
            if lesion_class and not rec.is_stack:
                text += f"; no lesion above the threshold {thr:g} (the mask is empty)"
            elif empty and rec.is_stack:
                text += f"; {len(empty)} slice(s) with no lesion above {thr:g}"
        return text
