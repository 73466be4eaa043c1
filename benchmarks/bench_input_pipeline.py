"""Input pipeline: does data loading + augmentation bound training?

The dataset (default: the real BUSI images at ../shared/data/busi, read in
place) is read with ``napari_mtunet.data.load_dataset`` and served by the
project's ``make_dataloader`` (cache on, training augmentation on,
shuffling).  The same multi-task model + Adam + ``MultiTaskLoss`` then runs

- ``loader``:    one epoch pulling batches from the real DataLoader;
- ``preloaded``: the same number of batches of the same size from tensors
  already in memory (random permutation, no augmentation): the lower bound.

Both variants share one model/optimizer and alternate epoch by epoch
(rotating order).  The first loader epoch fills the decode cache and is
reported separately ("cold"); timed epochs are warm.  Target:
loader / preloaded <= 1.10 (median of paired ratios).

Also reported: the loader alone (no training) in images/s, cold (decoding)
and warm (cache + augmentation + collate).

    python benchmarks/bench_input_pipeline.py                       # BUSI, all images
    python benchmarks/bench_input_pipeline.py --workers 0,1 --max-samples 160
    python benchmarks/bench_input_pipeline.py --quick               # phantom data, tiny
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import _common as C
import torch

NAME = "input_pipeline"


def find_busi() -> Path | None:
    env = os.environ.get("MTUNET_BUSI")
    repo = C.HERE.parent
    for c in ([env] if env else []) + [str(repo.parent / "shared" / "data" / "busi"), "/work/shared/data/busi"]:
        p = Path(c) / "Dataset_BUSI_with_GT"
        if p.is_dir():
            return p
    return None


def loader_alone(loader) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch["image"])
    return time.perf_counter() - t0, n


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset folder (default: BUSI next to the checkout)")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--encoder", default="mobilenet_v2")
    p.add_argument("--workers", default="0", help="comma-separated num_workers values, one loader variant each")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per variant")
    args = p.parse_args()

    from napari_mtunet.config import AugmentConfig, ModelConfig, Preprocessing
    from napari_mtunet.data import load_dataset, make_dataloader
    from napari_mtunet.model import build_model
    from napari_mtunet.training.losses import MultiTaskLoss

    tmp = None
    if args.quick:
        args.size, args.batch, args.repeats = 64, 4, 1
        if args.max_samples is None:
            args.max_samples = 12
    if args.data is None and args.quick:
        from napari_mtunet.sample_data import write_phantom_dataset

        tmp = tempfile.TemporaryDirectory(prefix="mtunet-bench-")
        args.data = str(write_phantom_dataset(Path(tmp.name) / "phantom", n=args.max_samples, size=96, seed=0))
    if args.data is None:
        busi = find_busi()
        if busi is None:
            raise SystemExit("BUSI not found next to the checkout; pass --data DIR (or run with --quick)")
        args.data = str(busi)
    C.apply_threads(args.threads)
    started = time.time()

    t0 = time.perf_counter()
    report = load_dataset(args.data, duplicates=False)
    t_load = time.perf_counter() - t0
    samples = list(report.samples)
    if args.max_samples:
        samples = samples[: args.max_samples]
    names = list(report.class_names)
    pre = Preprocessing(image_size=args.size)
    aug = AugmentConfig()
    print(f"{len(samples)} samples from {args.data} ({report.layout}), load_dataset {t_load:.1f} s", flush=True)

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_name=args.encoder, encoder_weights=None, num_classes=len(names),
                                    class_names=names), pre)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = MultiTaskLoss("both", w_seg=5.0, w_cls=1.0)

    def step(batch) -> None:  # the Trainer's CPU step
        out = model(batch["image"])
        parts = loss_fn(out, batch)
        if not torch.isfinite(parts.total):
            raise RuntimeError("non-finite loss")
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        opt.step()
        float(parts.total.detach())

    loaders = {}
    cold = {}
    for w in [int(v) for v in args.workers.split(",") if v != ""]:
        loader = make_dataloader(samples, names, pre, aug, train=True, batch_size=args.batch, num_workers=w,
                                 cache=True, seed=0)
        # cold epoch, loader alone: decodes and caches every image (workers: filled up front by make_dataloader)
        t, n = loader_alone(loader)
        cold[f"loader_w{w}"] = {"seconds": t, "images": n, "images_per_s": n / t}
        loaders[f"loader_w{w}"] = loader
        print(f"  loader_w{w}: cold epoch (decode + cache) {n / t:.1f} images/s", flush=True)

    # preloaded: the decoded, resized images as float tensors (what the model sees), no augmentation
    first = next(iter(loaders))
    ds = loaders[first].dataset
    xs, ms, ls = [], [], []
    for i in range(len(ds)):
        img, m = ds.decoded(i)
        xs.append(img.float() / 255.0 if img.dtype == torch.uint8 else img.float())
        ms.append(torch.zeros(1, args.size, args.size) if m is None else m.float())
        ls.append(ds.labels[i])
    X, M, L = torch.stack(xs), torch.stack(ms), torch.tensor(ls)
    n_batches = len(loaders[first])
    gen = torch.Generator().manual_seed(0)

    def preloaded_epoch():
        perm = torch.randperm(len(X), generator=gen)
        for b in range(n_batches):
            idx = perm[b * args.batch:(b + 1) * args.batch]
            step({"image": X[idx], "mask": M[idx], "label": L[idx]})

    variants = {k: (lambda ld=ld: [step(b) for b in ld]) for k, ld in loaders.items()}
    variants["preloaded"] = preloaded_epoch
    print(f"training epochs ({n_batches} batches of {args.batch}), interleaved:", flush=True)
    times = C.interleaved(variants, args.repeats, warmup=1)

    # loader alone, warm (cache hit + augmentation + collate)
    warm = {}
    for k, ld in loaders.items():
        ts = [loader_alone(ld) for _ in range(max(1, args.repeats))]
        t = C.median([a for a, _ in ts])
        warm[k] = {"seconds": t, "images": ts[0][1], "images_per_s": ts[0][1] / t}

    results = {
        "dataset": {"root": args.data, "layout": report.layout, "n_samples": len(samples), "class_names": names,
                    "load_dataset_s": t_load},
        "epoch_times_s": times,
        "epoch_median_s": {k: C.median(v) for k, v in times.items()},
        "ratios": {k: C.ratio_summary(times, k, "preloaded") for k in loaders},
        "loader_alone_cold": cold,
        "loader_alone_warm": warm,
        "train_images_per_s": {k: len(samples) / C.median(v) for k, v in times.items()},
    }
    rows, targets = [], []
    for k in loaders:
        r = results["ratios"][k]["median"]
        rows.append([k, results["epoch_median_s"][k], results["epoch_median_s"]["preloaded"], r,
                     cold[k]["images_per_s"], warm[k]["images_per_s"]])
        targets.append(C.target_check(f"{k}: loader epoch / preloaded epoch", r, 1.10))
    print(f"\n{len(samples)} images, {args.size}^2, batch {args.batch}, {args.encoder}; "
          f"{args.repeats} interleaved epochs per variant")
    C.print_table(["variant", "epoch_s", "preloaded_s", "loader/preloaded", "loader-alone cold img/s",
                   "loader-alone warm img/s"], rows)
    C.print_targets(targets)
    C.write_result(
        NAME,
        args,
        {"config": {"size": args.size, "batch": args.batch, "encoder": args.encoder, "workers": args.workers,
                    "repeats": args.repeats, "max_samples": args.max_samples, "augment": aug.to_dict(),
                    "data": "phantom (quick)" if tmp else args.data},
         "results": results, "targets": targets},
        started,
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
