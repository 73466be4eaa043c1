"""``mtunet experiment DATASET --study finetune``: does fine-tuning on a few corrections pay off? Measured.

Protocol (documented, seeded, runs on any labelled dataset):

1. Split the dataset (grouped by patient / duplicate cluster, stratified by
   class) into part **A** (the base model's data) and part **B** (a "new
   scanner"; ``b_fraction`` 0.4, rounded to whole grouped folds: 150 + 150 of
   BUSI's 300 images).
2. Train a base model on A with the project's recipe (or take one given
   with ``--base``; it must have been trained on A's images), keeping A's own
   held-out test part for measuring forgetting.
3. Make B look like another scanner with a seeded, documented *shift*
   (:data:`SHIFTS`: gain/gamma, speckle strength, blur/resolution, depth
   attenuation, all of them, or none).  Masks are unchanged (a shift changes
   intensities, not anatomy).
4. For k = 5, 10, 20 and each repeat: pick k images of shifted B (seeded,
   spread over the classes), write them with their ground truth as a
   correction folder (what the Annotate widget writes), fine-tune the base
   with :func:`napari_mtunet.workflows.iter_finetune` and the settings under
   test, and score the child and the base on the *rest* of shifted B
   (per-image Dice, balanced accuracy) and on A's test part (forgetting).
5. Report mean differences (child - base) with 95% t-intervals over repeats,
   the fine-tuning wall time, a table and a plot of Dice vs k.

Outputs in ``OUT``: ``study.json`` (settings), ``data/`` (A, shifted B),
``base/`` (the base run), ``results.jsonl`` (one line per fine-tune; the
study resumes), ``finetune_report.md``, ``finetune_dice_vs_k.png``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import FinetuneConfig

# --------------------------------------------------------------------------- scanner shifts


def _gain_gamma(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(0.8 * np.power(x, 1.6), 0, 1)  # darker, more contrast in the bright range


def _speckle(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage as ndi

    noise = ndi.gaussian_filter(rng.rayleigh(scale=0.55, size=x.shape[:2]), 0.8)[..., None] / (0.55 * 1.2533)
    return np.clip(x * (0.45 + 0.55 * noise), 0, 1)


def _blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.transform import resize

    h, w = x.shape[:2]
    low = resize(ndi.gaussian_filter(x, (1.5, 1.5, 0)), (max(8, h // 3), max(8, w // 3), x.shape[2]), order=1,
                 anti_aliasing=True)
    return np.clip(resize(low, (h, w, x.shape[2]), order=1), 0, 1)


def _depth(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h = x.shape[0]
    att = np.exp(-1.6 * np.linspace(0, 1, h))[:, None, None]
    return np.clip(x * att * 1.15, 0, 1)


def _all(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _depth(_blur(_speckle(_gain_gamma(x, rng), rng), rng), rng)


#: name -> (description, function of a float RGB image in [0, 1] and a seeded generator).
SHIFTS: dict[str, tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]] = {
    "none": ("no shift (the same scanner)", lambda x, rng: x),
    "gain_gamma": ("gain 0.8, gamma 1.6 (darker, stretched bright range)", _gain_gamma),
    "speckle": ("stronger multiplicative Rayleigh speckle (correlated, mean-preserving)", _speckle),
    "blur": ("lower resolution: Gaussian blur (sigma 1.5 px) then 3x down- and up-sampling", _blur),
    "depth": ("depth attenuation exp(-1.6 depth), gain 1.15", _depth),
    "all": ("gain/gamma, speckle, blur and depth attenuation together", _all),
}


def apply_shift(image: np.ndarray, shift: str, seed: int) -> np.ndarray:
    """``image`` (any dtype/channels) as the shifted scanner would show it: uint8 RGB."""
    from .preprocess import to_float_rgb

    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; choose from {sorted(SHIFTS)}")
    x = to_float_rgb(image).astype(np.float64)
    y = SHIFTS[shift][1](x, np.random.default_rng(seed))
    return np.clip(np.round(y * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- settings


@dataclass
class FinetuneStudySettings:
    dataset: str
    layout: str = "auto"
    shifts: list[str] = field(default_factory=lambda: ["none", "gain_gamma", "blur", "all"])
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    repeats: int = 3
    b_fraction: float = 0.4
    encoder: str = "timm-tf_efficientnet_lite0"
    encoder_weights: str | None = "imagenet"
    base_epochs: int = 20
    image_size: int = 128
    base: str | None = None  # a checkpoint trained on A (else trained here)
    config: dict[str, Any] = field(default_factory=dict)  # FinetuneConfig overrides (the settings under test)
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [s for s in self.shifts if s not in SHIFTS]
        if bad:
            raise ValueError(f"unknown shift(s) {bad}; choose from {sorted(SHIFTS)}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"k values must be >= 1, got {self.ks}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        FinetuneConfig.from_dict({**FinetuneConfig().to_dict(), **self.config})  # validate early

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change results (a resumed study must match them; shifts, ks and repeats may grow)."""
        d = json.loads(json.dumps(asdict(self)))  # as study.json stores it (tuples become lists)
        for k in ("shifts", "ks", "repeats", "device"):
            d.pop(k)
        return d

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig.from_dict({**FinetuneConfig().to_dict(), "device": self.device, "check_fraction": 0.0,
                                         "base_check_images": 0, **self.config})


# --------------------------------------------------------------------------- data


def _write_generic(root: Path, items: list[tuple[str, np.ndarray, np.ndarray | None, str | None, str]]) -> Path:
    """items: (name, image uint8, mask {0,1} | None, label, group) -> images/, masks/, labels.csv."""
    from PIL import Image

    from . import csvsafe

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = [["filename", "label", "group"]]
    for name, img, mask, label, group in items:
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        if mask is not None:
            Image.fromarray((mask > 0).astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
        rows.append([f"{name}.png", label or "", group])
    (root / "labels.csv").write_bytes(csvsafe.format_rows(rows).encode("utf-8"))
    return root


def _materialise(settings: FinetuneStudySettings, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Split into A / B and write A and each shifted B as generic-layout folders (once)."""
    from .config import DataConfig
    from .data import split_groups, train_val_test_split
    from .data.io import load_sample
    from .workflows.data import load

    done = out / "data" / "parts.json"
    if done.is_file():
        return json.loads(done.read_text())
    loaded = load(DataConfig(root=settings.dataset, layout=settings.layout))
    split = train_val_test_split(loaded.samples, 0.0, settings.b_fraction, settings.seed, root=loaded.root)
    idx = {loaded.key(s): i for i, s in enumerate(loaded.samples)}
    a_idx = [idx[k] for k in split.train]
    b_idx = [idx[k] for k in split.test]
    groups = split_groups(loaded.samples)
    decoded = {}
    for i in a_idx + b_idx:
        image, mask = load_sample(loaded.samples[i])
        decoded[i] = (image, mask)
    from .preprocess import to_float_rgb

    def as_u8(image: np.ndarray) -> np.ndarray:
        return np.clip(np.round(to_float_rgb(image) * 255), 0, 255).astype(np.uint8)

    def grp(i: int) -> str:  # the grouping (patient / duplicate cluster), kept so later splits stay leak-free
        import hashlib

        return "g" + hashlib.sha1(str(groups[i]).encode()).hexdigest()[:10]

    _write_generic(out / "data" / "A", [(f"a{i:04d}", as_u8(decoded[i][0]), decoded[i][1], loaded.samples[i].label,
                                         grp(i)) for i in a_idx])
    for shift in settings.shifts:
        _write_generic(out / "data" / f"B_{shift}", [
            (f"b{i:04d}", apply_shift(decoded[i][0], shift, settings.seed + i), decoded[i][1], loaded.samples[i].label,
             grp(i)) for i in b_idx])
    parts = {"A": len(a_idx), "B": len(b_idx), "class_names": loaded.class_names,
             "b_names": [f"b{i:04d}" for i in b_idx], "b_labels": [loaded.samples[i].label for i in b_idx]}
    done.write_text(json.dumps(parts))
    log(f"split {loaded.headline()}: A {len(a_idx)} images (base model), B {len(b_idx)} images (new scanner)")
    return parts


def _base_model(settings: FinetuneStudySettings, out: Path, log: Callable[[str], None]) -> Path:
    from .config import AugmentConfig, DataConfig, ModelConfig, Preprocessing, RunConfig, TrainConfig
    from .events import drive
    from .workflows import iter_train

    if settings.base:
        return Path(settings.base)
    best = out / "base" / "best.safetensors"
    if best.is_file():
        return best
    d = RunConfig()
    run = RunConfig(
        model=ModelConfig(encoder_name=settings.encoder, encoder_weights=settings.encoder_weights),
        preprocessing=Preprocessing(image_size=settings.image_size),
        data=DataConfig(root=str((out / "data" / "A").resolve()), layout="generic", val_fraction=0.15,
                        test_fraction=0.2, seed=settings.seed, augment=AugmentConfig(**d.data.augment.to_dict())),
        train=TrainConfig(**{**d.train.to_dict(), "epochs": settings.base_epochs, "device": settings.device,
                             "seed": settings.seed}),
    )
    log(f"training the base model on A ({settings.encoder}, {settings.base_epochs} epochs, {settings.image_size} px)")
    outcome = drive(iter_train(run, out / "base", n_boot=200), [lambda ev: log(ev.text) if ev.kind == "status" else None])
    return Path(outcome.best_checkpoint)


def _scores(model: Any, loaded: Any, indices: list[int], info: Any, device: Any) -> dict[str, np.ndarray]:
    """Per-image Dice and (label, predicted class) for ``indices`` of ``loaded`` (the model's post-processing)."""
    from .training import predict_dataset
    from .training.metrics import dice_iou_per_image

    ds = loaded.dataset(indices, info.preprocessing)
    preds = predict_dataset(model, ds, device=device, postprocessing=info.postprocessing)
    out = {"labels": preds.labels}
    if preds.pred_masks is not None:
        out["dice"] = dice_iou_per_image(preds.pred_masks, preds.true_masks)[0]
    if preds.probabilities is not None:
        out["pred"] = preds.probabilities.argmax(1)
    return out


def _summ(s: dict[str, np.ndarray], sel: np.ndarray | None = None) -> dict[str, float]:
    from .training.validation import balanced_accuracy

    sel = np.ones(len(s["labels"]), bool) if sel is None else sel
    out = {}
    if "dice" in s:
        out["dice"] = float(s["dice"][sel].mean())
    if "pred" in s:
        y = s["labels"][sel]
        ok = y >= 0
        out["balanced_accuracy"] = balanced_accuracy(y[ok], s["pred"][sel][ok]) if ok.any() else math.nan
    return out


def _pick(labels: list[str], k: int, rng: np.random.Generator) -> list[int]:
    """k indices spread over the classes (round-robin over shuffled classes)."""
    by: dict[str, list[int]] = {}
    for i in rng.permutation(len(labels)):
        by.setdefault(labels[int(i)], []).append(int(i))
    chosen: list[int] = []
    while len(chosen) < min(k, len(labels)):
        for c in sorted(by):
            if by[c] and len(chosen) < k:
                chosen.append(by[c].pop())
    return sorted(chosen)


def run_finetune_study(settings: FinetuneStudySettings, out: Path, log: Callable[[str], None] = print) -> Path:
    from .checkpoint import load_checkpoint
    from .config import DataConfig
    from .data import load_splits
    from .device import resolve_device
    from .events import drive
    from .workflows import iter_finetune
    from .workflows.data import load, split_indices

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # a study resumes (finished fine-tunes are kept) only with the same data, base and fine-tune settings
    if (out / "study.json").is_file():
        old = json.loads((out / "study.json").read_text())
        now = settings.fingerprint()
        differ = [k for k in now if old.get(k) != now[k]]
        if differ:
            raise ValueError(f"{out} holds a fine-tuning study with other settings ({', '.join(differ)}); "
                             "use another --out")
    (out / "study.json").write_text(json.dumps(asdict(settings), indent=1))
    _materialise(settings, out, log)
    base = _base_model(settings, out, log)
    device = resolve_device(settings.device)
    base_model, info = load_checkpoint(base, device="cpu")
    names = info.class_names
    a = load(DataConfig(root=str(out / "data" / "A"), layout="generic"), class_names=names)
    a_test: list[int] = []
    split_file = base.parent / "splits.json"
    if split_file.is_file():
        a_test = list(split_indices(a, load_splits(split_file)[0])["test"])
    base_a = _summ(_scores(base_model, a, a_test, info, device)) if a_test else {}
    results_file = out / "results.jsonl"
    done = set()
    if results_file.is_file():
        done = {(r["shift"], r["k"], r["repeat"]) for r in map(json.loads, results_file.read_text().splitlines())}
    cfg = settings.finetune_config()
    for shift in settings.shifts:
        b = load(DataConfig(root=str(out / "data" / f"B_{shift}"), layout="generic"), class_names=names)
        stems = [Path(s.image).stem for s in b.samples]
        b_labels = [s.label for s in b.samples]
        base_b = _scores(base_model, b, list(range(len(b.samples))), info, device)
        for k in settings.ks:
            for r in range(settings.repeats):
                if (shift, k, r) in done:
                    continue
                rng = np.random.default_rng(settings.seed * 1000 + 97 * k + r)
                chosen = _pick(b_labels, k, rng)
                rest = np.ones(len(b.samples), bool)
                rest[chosen] = False
                corr = out / "finetunes" / shift / f"k{k}" / f"r{r}"
                _copy_subset(out / "data" / f"B_{shift}", corr / "corrections", [stems[i] for i in chosen])
                t0 = time.perf_counter()
                outcome = drive(iter_finetune(base, corr / "corrections", corr / "model", config=cfg))
                seconds = time.perf_counter() - t0
                child, _ = load_checkpoint(outcome.child, device="cpu")
                child_b = _scores(child, b, list(np.flatnonzero(rest)), info, device)
                row = {
                    "shift": shift, "k": k, "repeat": r, "seconds": seconds, "steps": outcome.steps,
                    "n_rest": int(rest.sum()),
                    "base_B": _summ(base_b, rest), "child_B": _summ(child_b),
                    "base_A": base_a, "child_A": _summ(_scores(child, a, a_test, info, device)) if a_test else {},
                }
                with open(results_file, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                d = row["child_B"].get("dice", math.nan) - row["base_B"].get("dice", math.nan)
                log(f"{shift} k={k} r={r}: Dice on the rest of B {row['base_B'].get('dice', math.nan):.3f} -> "
                    f"{row['child_B'].get('dice', math.nan):.3f} ({d:+.3f}), {seconds:.0f}s")
    return write_finetune_report(out, settings, log)


def _copy_subset(src: Path, dst: Path, stems: list[str]) -> None:
    import shutil

    from . import csvsafe

    if dst.exists():
        shutil.rmtree(dst)
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir(parents=True)
    keep = set(stems)
    rows = [["filename", "label", "group"]]
    import csv

    with open(src / "labels.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            stem = Path(row["filename"]).stem
            if stem in keep:
                shutil.copy2(src / "images" / row["filename"], dst / "images" / row["filename"])
                if (src / "masks" / f"{stem}.png").is_file():
                    shutil.copy2(src / "masks" / f"{stem}.png", dst / "masks" / f"{stem}.png")
                rows.append([row["filename"], row["label"], row.get("group", "")])
    (dst / "labels.csv").write_bytes(csvsafe.format_rows(rows).encode("utf-8"))


def _ci(values: list[float]) -> tuple[float, float, float]:
    from scipy import stats

    v = np.array([x for x in values if x is not None and math.isfinite(x)], float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan, math.nan
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def write_finetune_report(out: Path, settings: FinetuneStudySettings, log: Callable[[str], None] = print) -> Path:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] \
        if (out / "results.jsonl").is_file() else []
    parts_file = out / "data" / "parts.json"
    parts = json.loads(parts_file.read_text()) if parts_file.is_file() else {}
    sizes = (f"part A {parts['A']} images, part B {parts['B']} images (asked for {settings.b_fraction:.0%}; "
             "rounded to whole grouped folds)" if "A" in parts and "B" in parts
             else f"part B = {settings.b_fraction:.0%} of the images")
    lines = ["# Fine-tuning on a few corrections: measured\n",
             f"Dataset `{settings.dataset}`; base model {settings.base or settings.encoder} trained on part A; "
             f"{sizes} as a new scanner. Fine-tune settings: "
             f"`{json.dumps(settings.finetune_config().to_dict())}`. Differences are child - base, mean over "
             f"{settings.repeats} repeat(s) with 95% t-intervals.\n",
             "| shift | k | Dice rest of B: base -> child | ΔDice B [95% CI] | Δbal. acc. B [95% CI] | ΔDice A (forgetting) | fine-tune s |",
             "|---|---|---|---|---|---|---|"]
    table = {}
    for shift in settings.shifts:
        for k in settings.ks:
            rs = [r for r in rows if r["shift"] == shift and r["k"] == k]
            if not rs:
                continue
            db = _ci([r["child_B"].get("dice", math.nan) - r["base_B"].get("dice", math.nan) for r in rs])
            da = _ci([r["child_B"].get("balanced_accuracy", math.nan) - r["base_B"].get("balanced_accuracy", math.nan)
                      for r in rs])
            df = _ci([r["child_A"].get("dice", math.nan) - r["base_A"].get("dice", math.nan) for r in rs
                      if r.get("child_A")])
            base = np.mean([r["base_B"].get("dice", math.nan) for r in rs])
            child = np.mean([r["child_B"].get("dice", math.nan) for r in rs])
            secs = np.mean([r["seconds"] for r in rs])
            table[(shift, k)] = (base, child, db)
            lines.append(f"| {shift} | {k} | {base:.3f} -> {child:.3f} | {db[0]:+.3f} [{db[1]:+.3f}, {db[2]:+.3f}] | "
                         f"{da[0]:+.3f} [{da[1]:+.3f}, {da[2]:+.3f}] | {df[0]:+.3f} [{df[1]:+.3f}, {df[2]:+.3f}] | "
                         f"{secs:.0f} |")
    lines.append("\nShifts: " + "; ".join(f"`{s}`: {SHIFTS[s][0]}" for s in settings.shifts) + ".\n")
    fig = _plot(out, settings, table)
    if fig:
        lines.append(f"![Dice vs k]({fig})\n")
    path = out / "finetune_report.md"
    path.write_text("\n".join(lines))
    log(f"wrote {path}")
    return path


def _plot(out: Path, settings: FinetuneStudySettings, table: dict) -> str | None:
    if not table:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for shift in settings.shifts:
        ks = [k for k in settings.ks if (shift, k) in table]
        if not ks:
            continue
        base = [table[(shift, k)][0] for k in ks]
        child = [table[(shift, k)][1] for k in ks]
        line, = ax.plot(ks, child, "o-", label=f"{shift}: fine-tuned")
        ax.plot(ks, base, "x--", color=line.get_color(), alpha=0.6, label=f"{shift}: base")
    ax.set_xlabel("k corrected images")
    ax.set_ylabel("per-image Dice, rest of B")
    ax.set_xticks(settings.ks)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title("Fine-tuning on k corrections of a shifted scanner")
    fig.tight_layout()
    name = "finetune_dice_vs_k.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name
