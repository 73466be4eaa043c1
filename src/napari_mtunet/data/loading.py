"""``load_dataset``: layout reader + validation + duplicates + summary in one call."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .duplicates import (
    DHASH_MAX_DISTANCE,
    PHASH_MAX_DISTANCE,
    DuplicateCluster,
    ImageHashes,
    find_duplicates,
    image_hashes,
)
from .errors import DataError, DatasetValidationError, EmptyDatasetError, LayoutError, Problem
from .io import load_sample, read_region, tiff_levels
from .layouts import LAYOUTS, detect_layout, load_layout
from .layouts._common import natural_key
from .samples import Sample

#: Problem kinds that are warnings: reported, but strict mode does not fail on them.
WARNING_KINDS = frozenset(
    {"exact_duplicate", "conflicting_duplicate", "unknown_provider", "too_few_samples", "unexpected_file",
     "unexpected_folder"}
)
REQUIRE_CHOICES = ("any", "mask", "label", "both")


def is_warning(problem: Problem) -> bool:
    return problem.kind in WARNING_KINDS or problem.action == "ignored"


@dataclass(frozen=True)
class SampleStats:
    """What validation measured on one sample's decoded pixels."""

    height: int
    width: int
    channels: int
    dtype: str
    mask_fraction: float | None  # foreground fraction, None without a mask


@dataclass
class DatasetSummary:
    """Counts for the CLI / dataset widget; ``format()`` renders them as text."""

    root: str
    layout: str
    n_samples: int
    class_names: list[str]
    class_counts: dict[str, int]
    n_unlabelled: int
    n_with_mask: int
    n_empty_mask: int
    n_without_mask: int
    sizes: dict[str, Any]
    channels: dict[str, int]
    dtypes: dict[str, int]
    n_groups: int
    group_source: str
    n_exact_duplicate_clusters: int
    n_near_duplicate_clusters: int
    n_in_duplicate_clusters: int
    n_with_duplicate: int
    problems_by_kind: dict[str, int]
    n_skipped: int
    n_errors: int
    n_warnings: int
    notes: list[str] = field(default_factory=list)

    @property
    def duplicate_fraction(self) -> float:
        """Fraction of images that have at least one (exact or near) duplicate in the dataset."""
        return self.n_with_duplicate / self.n_samples if self.n_samples else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["duplicate_fraction"] = self.duplicate_fraction
        return d

    def format(self) -> str:
        lines = [f"Dataset {self.root}  (layout: {self.layout})", f"  samples: {self.n_samples}"]
        width = max([len(c) for c in self.class_counts] + [5])
        for c in self.class_names:
            n = self.class_counts.get(c, 0)
            pct = 100.0 * n / self.n_samples if self.n_samples else 0.0
            lines.append(f"    {c:<{width}}  {n:6d}  ({pct:4.1f}%)")
        if self.n_unlabelled:
            lines.append(f"    {'(no class)':<{width}}  {self.n_unlabelled:6d}")
        lines.append(
            f"  masks: {self.n_with_mask} present ({self.n_empty_mask} empty = no lesion), "
            f"{self.n_without_mask} without mask (classification only)"
        )
        s = self.sizes
        if s:
            common = ", ".join(f"{k} x{v}" for k, v in s.get("most_common", []))
            lines.append(
                f"  image sizes (WxH): {s['min_width']}-{s['max_width']} x {s['min_height']}-{s['max_height']}"
                f"; most common: {common}"
            )
        lines.append(f"  channels: {dict(self.channels)}; dtypes: {dict(self.dtypes)}")
        lines.append(f"  groups: {self.n_groups} ({self.group_source})")
        lines.append(
            f"  duplicates: {self.n_exact_duplicate_clusters} exact and {self.n_near_duplicate_clusters} near-duplicate "
            f"cluster(s); {self.n_with_duplicate} images ({100 * self.duplicate_fraction:.1f}%) have a duplicate "
            "(kept together by the splitter)"
        )
        if self.problems_by_kind:
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.problems_by_kind.items()))
            lines.append(
                f"  problems: {self.n_errors} error(s), {self.n_warnings} warning(s); "
                f"{self.n_skipped} file(s) skipped — {kinds}"
            )
        else:
            lines.append("  problems: none")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass
class DatasetReport:
    """The result of :func:`load_dataset`: usable samples plus everything found wrong."""

    root: Path
    layout: str
    samples: list[Sample]
    problems: list[Problem]
    class_names: list[str]
    duplicates: list[DuplicateCluster]
    stats: dict[str, SampleStats]
    summary: DatasetSummary

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @property
    def notes(self) -> list[str]:
        return self.summary.notes

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not is_warning(p)]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if is_warning(p)]

    def format(self, max_problems: int = 30) -> str:
        out = [self.summary.format()]
        if self.problems:
            out.append("Problems:")
            out.extend(f"  {p}" for p in self.problems[:max_problems])
            if len(self.problems) > max_problems:
                out.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(out)


def _resolve(root: Path, layout: str) -> tuple[str, Path]:
    if layout == "auto":
        return detect_layout(root)
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; known: {sorted(LAYOUTS)} or 'auto'", root)
    if not root.is_dir():
        raise LayoutError("dataset folder does not exist" if not root.exists() else "expected a folder", root)
    if LAYOUTS[layout].detect(root):
        return layout, root
    try:
        found, found_root = detect_layout(root)
    except LayoutError:
        found, found_root = None, root
    if found == layout:
        return layout, found_root
    hint = f" (it looks like {found!r} at {found_root})" if found else ""
    raise LayoutError(f"folder does not match the {layout!r} layout — {LAYOUTS[layout].description}{hint}", root)


def dataset_root(root: str | Path, layout: str = "auto") -> Path | None:
    """The folder whose files a dataset at ``root`` is read from (a layout may sit up to two levels below the
    folder given: ``busi/`` holds ``Dataset_BUSI_with_GT/``); None when ``root`` holds no dataset (any more)."""
    try:
        return _resolve(Path(root).expanduser(), layout)[1].resolve()
    except (LayoutError, OSError):
        return None


def _inspect(sample: Sample, want_hash: bool) -> tuple[SampleStats, ImageHashes | None]:
    image, mask = load_sample(sample)
    channels = 1 if image.ndim == 2 else image.shape[2]
    frac = None if mask is None else float(mask.mean())
    h = image_hashes(image) if want_hash else None
    return SampleStats(image.shape[0], image.shape[1], channels, str(image.dtype), frac), h


def _inspect_region_sources(samples: list[Sample]) -> dict[str, DataError]:
    """Check each slide (and its masks) of region samples once: header + one patch decode."""
    errors: dict[str, DataError] = {}
    by_file: dict[Path, Sample] = {}
    for s in samples:
        by_file.setdefault(s.image, s)
    for img, s in by_file.items():
        try:
            levels = tiff_levels(img)
            for m in s.masks:
                mlev = tiff_levels(m)
                if len(mlev) <= s.level or mlev[s.level] != levels[s.level]:
                    raise DataError(
                        f"mask level {s.level} size {mlev[s.level] if len(mlev) > s.level else 'missing'} differs "
                        f"from the slide's {levels[s.level]} ({img})",
                        m,
                        kind="mask_size",
                    )
                read_region(m, s.region, s.level)
            read_region(img, s.region, s.level)
        except DataError as exc:
            errors[str(img)] = exc
    return errors


def load_dataset(
    root: str | Path,
    layout: str = "auto",
    strict: bool = False,
    *,
    class_names: Sequence[str] | None = None,
    require: str = "any",
    check_files: bool = True,
    duplicates: bool = True,
    phash_max: int = PHASH_MAX_DISTANCE,
    dhash_max: int = DHASH_MAX_DISTANCE,
    min_per_class: int = 3,
    num_threads: int | None = None,
    layout_options: dict[str, Any] | None = None,
    **options: Any,
) -> DatasetReport:
    """Read a dataset folder into validated :class:`Sample` records plus a report.

    Parameters
    ----------
    root : the dataset folder (or a folder up to two levels above it).
    layout : ``"auto"`` or one of ``busi, isic, lgg, siim, panda, generic, folders``.
    strict : raise :class:`DatasetValidationError` listing every error-level
        problem instead of skipping the affected files (warnings such as
        duplicates never fail).
    class_names : the allowed classes, in model order; samples with another
        label are reported (``unknown_class``) and skipped.  Default: the
        layout's own classes or the sorted labels found.
    require : ``"any"`` (a mask or a label), ``"mask"``, ``"label"`` or ``"both"``:
        samples lacking it are skipped and reported.
    check_files : decode every image and mask (catches truncated files, size
        mismatches, empty masks; needed for the summary and duplicates).
    duplicates : detect exact/near-duplicate images (needs ``check_files``).
    min_per_class : classes with fewer samples get a ``too_few_samples`` warning.
    layout_options : passed to the layout reader (e.g. ``label_column`` for
        ``lgg``; ``level``, ``patch_size``, ``min_tissue``,
        ``max_patches_per_slide`` for ``panda``; ``csv_name`` for ``siim``),
        as :attr:`~napari_mtunet.config.DataConfig.layout_options` holds them;
        further keyword arguments are added to them.
    """
    if require not in REQUIRE_CHOICES:
        raise DataError(f"require must be one of {REQUIRE_CHOICES}, got {require!r}")
    root = Path(root).expanduser()
    name, data_root = _resolve(root, layout)
    res = load_layout(name, data_root, {**(layout_options or {}), **options})
    problems = list(res.problems)
    samples = list(res.samples)

    # classes -----------------------------------------------------------------
    if class_names is not None:
        names = [str(c) for c in class_names]
        kept = []
        for s in samples:
            if s.label is not None and s.label not in names:
                problems.append(Problem(str(s.id), "unknown_class", f"class {s.label!r} is not one of {names}"))
            else:
                kept.append(s)
        samples = kept
    elif res.class_names:
        names = list(res.class_names)
    else:
        names = sorted({s.label for s in samples if s.label is not None}, key=natural_key)

    # decode & validate ---------------------------------------------------------
    stats: dict[str, SampleStats] = {}
    hashes: dict[str, ImageHashes] = {}
    if check_files and samples:
        region = [s for s in samples if s.region is not None]
        plain = [s for s in samples if s.region is None]
        bad_slides = _inspect_region_sources(region) if region else {}
        want_hash = duplicates
        workers = num_threads or min(4, os.cpu_count() or 1)

        def work(s: Sample):
            try:
                return s, _inspect(s, want_hash), None
            except DataError as exc:
                return s, None, exc

        if workers > 1 and len(plain) > 8:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(work, plain))
        else:
            results = [work(s) for s in plain]
        good: list[Sample] = []
        for s, out, exc in results:
            if exc is not None:
                problems.append(Problem(exc.path or str(s.image), exc.kind, exc.detail + f" (sample {s.id})"))
                continue
            st, hh = out  # type: ignore[misc]
            stats[s.id] = st
            if hh is not None:
                hashes[s.id] = hh
            if st.mask_fraction == 0.0 and not s.mask_is_empty:
                s = dataclasses.replace(s, mask_is_empty=True)
            good.append(s)
        reported: set[str] = set()
        for s in region:
            exc = bad_slides.get(str(s.image))
            if exc is not None:
                if str(s.image) not in reported:
                    reported.add(str(s.image))
                    n = sum(1 for r in region if r.image == s.image)
                    problems.append(Problem(exc.path or str(s.image), exc.kind, f"{exc.detail} ({n} patches skipped)"))
                continue
            w, h = s.region[2], s.region[3]  # type: ignore[index]
            stats[s.id] = SampleStats(h, w, 3, "uint8", None)
            good.append(s)
        order = {s.id: i for i, s in enumerate(samples)}
        samples = sorted(good, key=lambda s: order[s.id])

    # requirement filter ------------------------------------------------------------
    if require != "any":
        kept = []
        for s in samples:
            missing = []
            if require in ("mask", "both") and not s.has_mask:
                missing.append("mask")
            if require in ("label", "both") and s.label is None:
                missing.append("class label")
            if missing:
                problems.append(Problem(str(s.id), "missing_annotation",
                                        f"no {' and no '.join(missing)} (require={require!r})"))
            else:
                kept.append(s)
        samples = kept

    if not samples:
        detail = f"; {len(problems)} problem(s), first: {problems[0]}" if problems else ""
        raise EmptyDatasetError(f"no usable samples found with layout {name!r}{detail}", data_root)

    # duplicates --------------------------------------------------------------
    clusters: list[DuplicateCluster] = []
    if hashes:
        labels = {s.id: s.label for s in samples}
        hashes = {s.id: hashes[s.id] for s in samples if s.id in hashes}
        clusters = find_duplicates(hashes, labels, phash_max=phash_max, dhash_max=dhash_max)
        member_of = {m: c for c in clusters for m in c.members}
        new = []
        for s in samples:
            c = member_of.get(s.id)
            if c is not None:
                extra = dict(s.extra)
                extra["duplicate_cluster"] = c.cluster_id
                s = dataclasses.replace(s, group=s.group or c.cluster_id, extra=extra)
            new.append(s)
        samples = new
        for c in clusters:
            if c.kind == "exact":
                problems.append(Problem(c.members[0], "exact_duplicate",
                                        f"identical pixels in {len(c.members)} files: {c.members[1:]}", "kept"))
            if c.conflicting_labels:
                problems.append(Problem(c.members[0], "conflicting_duplicate",
                                        f"{c.kind} duplicates with different classes {sorted(set(map(str, c.labels)))}: "
                                        f"{c.members}", "kept"))

    counts = Counter(s.label for s in samples if s.label is not None)
    for c in names:
        if counts.get(c, 0) < min_per_class and (counts.get(c, 0) > 0 or class_names is not None):
            problems.append(Problem(c, "too_few_samples",
                                    f"class {c!r} has {counts.get(c, 0)} sample(s); at least {min_per_class} are needed "
                                    "to appear in train, validation and test", "kept"))
    for lab in counts:
        if lab not in names:
            names.append(lab)

    if strict:
        errs = [p for p in problems if not is_warning(p)]
        if errs:
            raise DatasetValidationError(data_root, errs)

    summary = _summarise(data_root, name, samples, names, problems, clusters, stats, res.notes)
    return DatasetReport(data_root, name, samples, problems, names, clusters, stats, summary)


def _summarise(root, layout, samples, names, problems, clusters, stats, notes) -> DatasetSummary:
    counts = Counter(s.label for s in samples if s.label is not None)
    with_mask = [s for s in samples if s.has_mask]
    empty = [s for s in with_mask if s.mask_is_empty]
    sizes: dict[str, Any] = {}
    st = [stats[s.id] for s in samples if s.id in stats]
    if st:
        ws = np.array([x.width for x in st])
        hs = np.array([x.height for x in st])
        common = Counter(f"{x.width}x{x.height}" for x in st).most_common(3)
        sizes = {"min_width": int(ws.min()), "max_width": int(ws.max()), "min_height": int(hs.min()),
                 "max_height": int(hs.max()), "most_common": common}
    has_patient = any(s.group and "duplicate_cluster" not in s.extra for s in samples)
    groups = {s.group or s.id for s in samples}
    in_clusters = sum(len(c.members) for c in clusters)
    kinds = Counter(p.kind for p in problems)
    return DatasetSummary(
        root=str(root),
        layout=layout,
        n_samples=len(samples),
        class_names=list(names),
        class_counts={c: counts.get(c, 0) for c in names},
        n_unlabelled=sum(1 for s in samples if s.label is None),
        n_with_mask=len(with_mask),
        n_empty_mask=len(empty),
        n_without_mask=len(samples) - len(with_mask),
        sizes=sizes,
        channels={str(k): v for k, v in sorted(Counter(x.channels for x in st).items())},
        dtypes=dict(Counter(x.dtype for x in st)),
        n_groups=len(groups),
        group_source="patient/slide ids" + (" + duplicate clusters" if clusters else "") if has_patient
        else ("duplicate clusters; other images are their own group" if clusters else "each image is its own group"),
        n_exact_duplicate_clusters=sum(1 for c in clusters if c.kind == "exact"),
        n_near_duplicate_clusters=sum(1 for c in clusters if c.kind == "near"),
        n_in_duplicate_clusters=in_clusters,
        n_with_duplicate=in_clusters,
        problems_by_kind=dict(kinds),
        n_skipped=sum(1 for p in problems if p.action == "skipped"),
        n_errors=sum(1 for p in problems if not is_warning(p)),
        n_warnings=sum(1 for p in problems if is_warning(p)),
        notes=list(notes),
    )
