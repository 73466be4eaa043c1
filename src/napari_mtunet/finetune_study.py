"""``mtunet experiment DATASET --study finetune``: does fine-tuning on a few corrections pay off on a scanner
nobody simulated?  Measured so that the study cannot tune itself to its own shifts.

Protocol (seeded, resumable, runs on any labelled dataset):

1. **Bases.** For each of ``n_bases`` seeds the dataset is split (grouped by patient / duplicate cluster,
   stratified by class) into part A (the base model's data) and part B (``b_fraction``: the images of a "new
   scanner", like the unseen images a user has).  A base model is trained on A with the project's recipe
   through the training workflow (A's own validation part picks the epoch and the post-processing).
2. **Shifts.** Two disjoint sets of shifts are drawn from a wide family (:mod:`napari_mtunet.shifts`:
   gain, gamma, contrast, dynamic-range compression, offset, blur, resolution, speckle, depth attenuation,
   time-gain compensation; 2-4 of them with parameters drawn per shift): the **select** set chooses the
   defaults, the **report** set (other seeds) reports them.
3. **Trials.** For each base, shift and ``draws`` draw: B is shuffled; ``k`` images spread over the classes
   are the corrections, the next ``n_unlabelled`` are uncorrected images (images only), the rest (up to
   ``n_score``) are scored.  Every method (fine-tune settings, with or without the uncorrected images) runs
   :func:`napari_mtunet.workflows.iter_finetune` exactly as ``mtunet finetune`` does, and base and child are
   scored on the scored images shifted (per-image Dice, balanced accuracy) and unshifted (forgetting).
4. **Report.** Per set and method: the distribution of the Dice gain over trials (mean, median, 10th
   percentile, worst, share of losses), the balanced-accuracy change, forgetting and the wall time.  The
   method chosen on the select set (:func:`choose`) is reported on the report set.

Outputs in ``OUT``: ``study.json`` (settings), ``base<b>/`` (runs and B's images), ``results.jsonl`` (one
line per fine-tune), ``finetune_report.md`` and ``finetune_gains.png``.  Several processes may share ``OUT``
(each trial is claimed with a lock).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import AugmentConfig, DataConfig, FinetuneConfig, ModelConfig, Preprocessing, RunConfig, TrainConfig
from .data.errors import DataError
from .data.io import load_sample
from .data.layouts.generic import IMAGES_DIR
from .data.splits import round_robin_pick, split_groups, train_val_test_split
from .data.writer import NewSample, copy_generic_samples, write_generic_dataset
from .preprocess import to_float_rgb
from .shifts import Shift, draw_shifts

# The training, scoring and fine-tuning workflows are imported where they run: the CLI imports this module
# to show the study's defaults in --help, without torch.

#: name -> (FinetuneConfig overrides, whether the method gets the uncorrected images).
METHODS: dict[str, tuple[dict[str, Any], bool]] = {
    "ft_lr3e-4": ({"lr": 3e-4, "adapt_bn": "keep"}, False),
    "ft_lr3e-5": ({"lr": 3e-5, "adapt_bn": "keep"}, False),
    "ft_lr1e-4_enc0.1": ({"lr": 1e-4, "encoder_lr_scale": 0.1, "adapt_bn": "keep"}, False),
    "bn_corrections_ft_lr3e-5": ({"lr": 3e-5, "adapt_bn": "new"}, False),
    "bn_new": ({"steps_per_sample": 0, "adapt_bn": "new"}, True),
    "bn_new_ft_lr3e-5": ({"lr": 3e-5, "adapt_bn": "new"}, True),
    "bn_new_ft_lr3e-4": ({"lr": 3e-4, "adapt_bn": "new"}, True),  # the defaults with uncorrected images (auto)
    "bn_mix_ft_lr3e-5": ({"lr": 3e-5, "adapt_bn": "mix"}, True),
}


@dataclass
class FinetuneStudySettings:
    dataset: str
    layout: str = "auto"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    n_bases: int = 2
    n_select: int = 4
    n_report: int = 6
    draws: int = 3
    k: int = 10
    n_unlabelled: int = 70
    n_score: int = 70
    b_fraction: float = 0.5
    encoder: str = "timm-tf_efficientnet_lite0"
    encoder_weights: str | None = "imagenet"
    base_epochs: int = 20
    image_size: int = 128
    interactive: bool = False
    sets: list[str] = field(default_factory=lambda: ["select", "report"])
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; choose from {sorted(METHODS)}")
        if min(self.n_bases, self.draws, self.k) < 1 or self.n_select < 0 or self.n_report < 0:
            raise ValueError("n_bases, draws and k must be >= 1 and the shift counts >= 0")
        if not set(self.sets) <= {"select", "report"}:
            raise ValueError(f"sets must be 'select' and/or 'report', got {self.sets}")
        for m in self.methods:
            FinetuneConfig.from_dict({**FinetuneConfig().to_dict(), **METHODS[m][0]})  # validate early

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change results (a resumed study must match them; methods, counts and sets may grow)."""
        d = json.loads(json.dumps(asdict(self)))
        for k in ("methods", "n_select", "n_report", "draws", "sets", "device"):
            d.pop(k)
        return d

    def shifts(self, which: str) -> list[Shift]:
        """The ``select`` or ``report`` shifts (different seeds: the report never sees what chose)."""
        return draw_shifts(self.n_select, 1000 + self.seed) if which == "select" else \
            draw_shifts(self.n_report, 2000 + self.seed)


# --------------------------------------------------------------------------- data


def _pick(labels: list[str], k: int, rng: np.random.Generator) -> list[int]:
    """k indices spread over the classes (round-robin over shuffled classes)."""
    return round_robin_pick(labels, k, rng)


class _Base:
    """One base: part A's data and model, part B's images (plain and shifted) and the base model's scores."""

    def __init__(self, settings: FinetuneStudySettings, b: int, out: Path, log: Callable[[str], None]):
        self.settings, self.b, self.log = settings, b, log
        self.dir = out / f"base{b}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.parts = self._materialise()
        self.checkpoint = self._train()
        self._scores: dict[str, dict[str, np.ndarray]] = {}

    def _materialise(self) -> dict[str, Any]:
        from .workflows.data import load

        done = self.dir / "parts.json"
        if done.is_file():
            return json.loads(done.read_text())
        s = self.settings
        loaded = load(DataConfig(root=s.dataset, layout=s.layout))
        split = train_val_test_split(loaded.samples, 0.0, s.b_fraction, s.seed + self.b, root=loaded.root)
        idx = {loaded.key(x): i for i, x in enumerate(loaded.samples)}
        groups = split_groups(loaded.samples)

        def item(i: int, prefix: str) -> NewSample:
            image, mask = load_sample(loaded.samples[i])
            u8 = np.clip(np.round(to_float_rgb(image) * 255), 0, 255).astype(np.uint8)
            group = "g" + hashlib.sha1(str(groups[i]).encode()).hexdigest()[:10]
            return NewSample(u8, mask, loaded.samples[i].label, group, name=f"{prefix}{i:04d}")

        a_idx = [idx[k] for k in split.train]
        b_idx = [idx[k] for k in split.test]
        for part, prefix, indices in (("A", "a", a_idx), ("B_plain", "b", b_idx)):
            if (self.dir / part).exists():  # written by an attempt interrupted before parts.json
                shutil.rmtree(self.dir / part)
            write_generic_dataset(self.dir / part, [item(i, prefix) for i in indices])
        parts = {"A": len(a_idx), "B": len(b_idx), "class_names": loaded.class_names}
        done.write_text(json.dumps(parts))
        return parts

    def _train(self) -> Path:
        from .events import drive
        from .workflows import iter_train

        best = self.dir / "run" / "best.safetensors"
        if best.is_file():
            return best
        s, d = self.settings, RunConfig()
        run = RunConfig(
            model=ModelConfig(encoder_name=s.encoder, encoder_weights=s.encoder_weights, prompts=s.interactive),
            preprocessing=Preprocessing(image_size=s.image_size),
            data=DataConfig(root=str((self.dir / "A").resolve()), layout="generic", val_fraction=0.15,
                            seed=s.seed + self.b, augment=AugmentConfig(**d.data.augment.to_dict())),
            train=TrainConfig(**{**d.train.to_dict(), "epochs": s.base_epochs, "device": s.device,
                                 "seed": s.seed + self.b}),
        )
        if (self.dir / "run").exists():
            shutil.rmtree(self.dir / "run")  # an unfinished base run: trained again
        self.log(f"base {self.b}: training on A ({self.parts['A']} images, {s.encoder}, {s.base_epochs} epochs)")
        outcome = drive(iter_train(run, self.dir / "run", n_boot=100),
                        [lambda ev: self.log(f"  base {self.b}: {ev.text}") if ev.kind == "status" else None])
        return Path(outcome.best_checkpoint)

    def shifted(self, shift: Shift, key: str) -> Path:
        """Part B as ``shift`` shows it (written once per base and shift)."""
        from .workflows.data import load

        folder = self.dir / f"B_{key}"
        if (folder / "labels.csv").is_file():
            return folder
        plain = load(DataConfig(root=str(self.dir / "B_plain"), layout="generic"))
        items = []
        for i, smp in enumerate(plain.samples):
            image, mask = load_sample(smp)
            items.append(NewSample(shift.apply(image, seed=1000 * self.b + i), mask, smp.label, smp.group,
                                   name=Path(smp.image).stem))
        try:
            write_generic_dataset(folder, items)  # written whole, then renamed into place
        except DataError:
            if not (folder / "labels.csv").is_file():  # not another process that wrote it meanwhile
                raise
        return folder

    def scores(self, checkpoint: Path, folder: Path, indices: list[int] | None = None) -> dict[str, np.ndarray]:
        """Per-image Dice, labels and predicted classes of ``checkpoint`` on the images of ``folder`` (all, or
        those at ``indices``; the arrays are full length, NaN / -1 where not scored)."""
        from .checkpoint import load_checkpoint
        from .training.evaluate import score_images
        from .workflows.data import load

        model, info = load_checkpoint(checkpoint)
        data = load(DataConfig(root=str(folder), layout="generic"), class_names=info.class_names)
        n = len(data.samples)
        idx = list(range(n)) if indices is None else sorted(indices)
        scored = score_images(model, data.dataset(idx, info.preprocessing), postprocessing=info.postprocessing)
        out = {"dice": np.full(n, np.nan), "labels": np.full(n, -1), "pred": np.full(n, -1),
               "stems": [Path(x.image).stem for x in data.samples]}
        out["dice"][idx] = scored.dice
        out["labels"][idx] = scored.labels
        out["pred"][idx] = scored.predicted
        return out

    def base_scores(self, folder: Path) -> dict[str, np.ndarray]:
        if folder.name not in self._scores:
            self._scores[folder.name] = self.scores(self.checkpoint, folder)
        return self._scores[folder.name]


def _summary(s: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, float]:
    from .training.metrics import balanced_accuracy

    y, p = s["labels"][sel], s["pred"][sel]
    ok = y >= 0
    return {"dice": float(s["dice"][sel].mean()), "balanced_accuracy": float(balanced_accuracy(y[ok], p[ok])),
            "n": int(sel.sum())}


def _subset(src: Path, dst: Path, stems: list[str], *, masks: bool) -> None:
    """Copy ``stems`` of a generic folder: a correction folder (images, masks, labels.csv), or images only."""
    if dst.exists():
        shutil.rmtree(dst)
    if masks:
        copy_generic_samples(src, dst, stems)
        return
    dst.mkdir(parents=True)
    for stem in stems:
        shutil.copy2(src / IMAGES_DIR / f"{stem}.png", dst / f"{stem}.png")


# --------------------------------------------------------------------------- running


def run_finetune_study(settings: FinetuneStudySettings, out: Path, log: Callable[[str], None] = print) -> Path:
    from filelock import FileLock, Timeout

    from .events import drive
    from .workflows import iter_finetune

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "study.json").is_file():
        old = json.loads((out / "study.json").read_text())
        now = settings.fingerprint()
        differ = [k for k in now if old.get(k) != now[k]]
        if differ:
            raise ValueError(f"{out} holds a fine-tuning study with other settings ({', '.join(differ)}); "
                             "use another --out")
    (out / "study.json").write_text(json.dumps(asdict(settings), indent=1))
    results_file = out / "results.jsonl"
    for which in settings.sets:
        for b in range(settings.n_bases):
            base = _Base(settings, b, out, log)
            plain = out / f"base{b}" / "B_plain"
            base_plain = base.base_scores(plain)
            for si, shift in enumerate(settings.shifts(which)):
                key = f"{which}{si}"
                shifted = base.shifted(shift, key)
                base_shift = base.base_scores(shifted)
                stems = base_shift["stems"]
                labels = [str(v) for v in base_shift["labels"]]
                for d in range(settings.draws):
                    rng = np.random.default_rng(settings.seed * 10_000 + 101 * b + 7 * si + d + (0 if which == "select" else 5000))
                    order = [int(i) for i in rng.permutation(len(stems))]
                    corr = [order[j] for j in _pick([labels[i] for i in order], settings.k, rng)]
                    rest = [i for i in order if i not in corr]
                    unl = rest[: settings.n_unlabelled]
                    scored = rest[settings.n_unlabelled: settings.n_unlabelled + settings.n_score]
                    sel = np.zeros(len(stems), bool)
                    sel[scored] = True
                    trial = out / "trials" / f"base{b}" / key / f"draw{d}"
                    for method in settings.methods:
                        tag = f"{which}/base{b}/{key}/draw{d}/{method}"
                        if results_file.is_file() and any(json.loads(line)["tag"] == tag
                                                          for line in results_file.read_text().splitlines()):
                            continue
                        claim = FileLock(str(out / "trials" / f".{tag.replace('/', '_')}.lock"))
                        (out / "trials").mkdir(parents=True, exist_ok=True)
                        try:
                            claim.acquire(timeout=0)
                        except Timeout:
                            continue
                        try:
                            if not (trial / "corrections" / "labels.csv").is_file():
                                _subset(shifted, trial / "corrections", [stems[i] for i in corr], masks=True)
                                _subset(shifted, trial / "uncorrected", [stems[i] for i in unl], masks=False)
                            overrides, use_unl = METHODS[method]
                            cfg = FinetuneConfig.from_dict({**FinetuneConfig().to_dict(), "device": settings.device,
                                                            **overrides})
                            model_dir = trial / f"model_{method}"
                            if model_dir.exists():
                                shutil.rmtree(model_dir)
                            t0 = time.perf_counter()
                            outcome = drive(iter_finetune(base.checkpoint, trial / "corrections", model_dir, config=cfg,
                                                          unlabelled=trial / "uncorrected" if use_unl else None))
                            seconds = time.perf_counter() - t0
                            child_shift = base.scores(outcome.child, shifted, scored)
                            child_plain = base.scores(outcome.child, plain, scored)
                            row = {
                                "tag": tag, "set": which, "base": b, "shift_index": si, "shift": shift.to_dict(),
                                "shift_name": shift.name, "draw": d, "method": method, "seconds": seconds,
                                "steps": outcome.steps, "n_corrections": len(corr), "n_unlabelled": len(unl),
                                "base_shifted": _summary(base_shift, sel), "child_shifted": _summary(child_shift, sel),
                                "base_plain": _summary(base_plain, sel), "child_plain": _summary(child_plain, sel),
                            }
                            with open(results_file, "a") as fh:
                                fh.write(json.dumps(row) + "\n")
                            shutil.rmtree(model_dir, ignore_errors=True)  # checkpoints are large; rows keep the scores
                            g = row["child_shifted"]["dice"] - row["base_shifted"]["dice"]
                            f = row["child_plain"]["dice"] - row["base_plain"]["dice"]
                            log(f"{tag}: Dice shifted {row['base_shifted']['dice']:.3f} -> "
                                f"{row['child_shifted']['dice']:.3f} ({g:+.3f}), unshifted {f:+.3f}, {seconds:.0f}s")
                        finally:
                            claim.release()
    return write_finetune_report(out, settings, log)


# --------------------------------------------------------------------------- report


def gains(rows: list[dict]) -> dict[str, float]:
    """The distribution of a method's effects over trials."""
    g = np.array([r["child_shifted"]["dice"] - r["base_shifted"]["dice"] for r in rows])
    f = np.array([r["child_plain"]["dice"] - r["base_plain"]["dice"] for r in rows])
    a = np.array([r["child_shifted"]["balanced_accuracy"] - r["base_shifted"]["balanced_accuracy"] for r in rows])
    secs = np.array([r["seconds"] for r in rows])
    if not len(g):
        return {}
    return {
        "n": int(len(g)), "gain_mean": float(g.mean()), "gain_median": float(np.median(g)),
        "gain_p10": float(np.quantile(g, 0.1)), "gain_min": float(g.min()), "losses": float((g < 0).mean()),
        "bacc_median": float(np.median(a)), "bacc_p10": float(np.quantile(a, 0.1)),
        "forgetting_median": float(np.median(f)), "forgetting_p10": float(np.quantile(f, 0.1)),
        "seconds_median": float(np.median(secs)),
        "base_shifted": float(np.mean([r["base_shifted"]["dice"] for r in rows])),
        "base_plain": float(np.mean([r["base_plain"]["dice"] for r in rows])),
    }


def choose(table: dict[str, dict[str, float]], *, unlabelled: bool | None = None) -> str | None:
    """The method with the highest median Dice gain among those whose 10th-percentile gain is not a loss,
    whose median balanced-accuracy change is >= -0.01 and whose median forgetting is >= -0.03 (falling back
    to the highest median gain when none qualifies).  ``unlabelled``: only methods that do / do not use the
    uncorrected images."""
    names = [m for m in table if table[m] and (unlabelled is None or METHODS[m][1] == unlabelled)]
    if not names:
        return None
    ok = [m for m in names if table[m]["gain_p10"] >= 0 and table[m]["bacc_median"] >= -0.01
          and table[m]["forgetting_median"] >= -0.03]
    return max(ok or names, key=lambda m: table[m]["gain_median"])


def write_finetune_report(out: Path, settings: FinetuneStudySettings, log: Callable[[str], None] = print) -> Path:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] \
        if (out / "results.jsonl").is_file() else []
    lines = ["# Fine-tuning on a few corrections of an unseen scanner: measured\n",
             f"Dataset `{settings.dataset}`; {settings.n_bases} base model(s) ({settings.encoder}, "
             f"{settings.base_epochs} epochs, {settings.image_size} px{', interactive' if settings.interactive else ''}) "
             f"each trained on its own part A; part B ({settings.b_fraction:.0%}) is the new scanner: per trial "
             f"{settings.k} corrections, {settings.n_unlabelled} uncorrected images, the rest (up to "
             f"{settings.n_score}) scored. Gains are child - base per-image Dice on the scored images, shifted; "
             "forgetting is the same on them unshifted. Shifts are drawn at random (napari_mtunet.shifts); the "
             "select set chose, the report set (other draws) reports.\n"]
    tables = {}
    for which in ("select", "report"):
        sub = [r for r in rows if r["set"] == which]
        if not sub:
            continue
        table = {m: gains([r for r in sub if r["method"] == m]) for m in dict.fromkeys(r["method"] for r in sub)}
        tables[which] = table
        n_shifts = len({(r["base"], r["shift_index"]) for r in sub})
        lines += [f"\n## {which} set ({n_shifts} base x shift pairs)\n",
                  "| method | uses uncorrected | trials | Dice gain median | p10 | worst | mean | losses | "
                  "Δbal. acc. median | forgetting median | p10 | s (median) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, t in sorted(table.items(), key=lambda kv: -kv[1].get("gain_median", -9)):
            if not t:
                continue
            lines.append(f"| {m} | {'yes' if METHODS[m][1] else 'no'} | {t['n']} | {t['gain_median']:+.3f} | "
                         f"{t['gain_p10']:+.3f} | {t['gain_min']:+.3f} | {t['gain_mean']:+.3f} | {t['losses']:.0%} | "
                         f"{t['bacc_median']:+.3f} | {t['forgetting_median']:+.3f} | {t['forgetting_p10']:+.3f} | "
                         f"{t['seconds_median']:.0f} |")
    if "select" in tables:
        best, best_plain = choose(tables["select"], unlabelled=True), choose(tables["select"], unlabelled=False)
        lines.append(f"\nChosen on the select set: with uncorrected images `{best}`, without `{best_plain}` "
                     "(rule: highest median gain whose 10th percentile is not a loss, balanced accuracy and "
                     "forgetting within bounds).\n")
    shifts = {(r["set"], r["base"], r["shift_index"]): r["shift_name"] for r in rows}
    lines.append("\nShifts: " + "; ".join(f"{k[0]} {k[2]} (base {k[1]}): `{v}`" for k, v in sorted(shifts.items())))
    fig = _plot(out, rows)
    if fig:
        lines.append(f"\n![Dice gains]({fig})\n")
    path = out / "finetune_report.md"
    path.write_text("\n".join(lines) + "\n")
    log(f"wrote {path}")
    return path


def _plot(out: Path, rows: list[dict]) -> str | None:
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [s for s in ("select", "report") if any(r["set"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.2), squeeze=False)
    for ax, which in zip(axes[0], sets):
        sub = [r for r in rows if r["set"] == which]
        methods = list(dict.fromkeys(r["method"] for r in sub))
        data = [[r["child_shifted"]["dice"] - r["base_shifted"]["dice"] for r in sub if r["method"] == m]
                for m in methods]
        ax.boxplot(data, vert=False, showmeans=True)
        ax.set_yticks(range(1, len(methods) + 1), methods)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("Dice gain on the shifted scanner (child - base)")
        ax.set_title(f"{which} shifts")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    name = "finetune_gains.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name
