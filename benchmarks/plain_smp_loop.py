"""A plain segmentation-models-pytorch training loop: the reference the project's recipe must beat.

Deliberately simple (what a competent user writes in an afternoon): ``smp.Unet``
with ``aux_params``, Adam, a fixed number of epochs, ``BCE + CE`` (unweighted),
horizontal flips, the *last* epoch's weights, no validation split.  It is
scored with the project's own metrics on the same grouped, stratified k-fold
splits of the dev images that ``recipe_study.py`` uses, so the two are
compared fold by fold.

    python benchmarks/plain_smp_loop.py ../shared/data/busi --encoder timm-tf_efficientnet_lite0 --weights imagenet
    python benchmarks/plain_smp_loop.py ../shared/data/busi --encoder mobilenet_v2 --weights none

Prints per-fold and mean per-image Dice and balanced accuracy and writes
``results/plain_loop_<encoder>_<weights>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study_data import fold_arrays, load_arrays, score  # noqa: E402


def train_plain(x, m, y, *, encoder: str, weights: str | None, n_classes: int, epochs: int, batch: int,
                lr: float, seed: int):
    import segmentation_models_pytorch as smp

    from napari_mtunet.encoders import load_pretrained, pretrained_normalization

    torch.manual_seed(seed)
    net = smp.Unet(encoder, encoder_weights=None, classes=1, aux_params={"classes": n_classes, "dropout": 0.2})
    if weights:
        load_pretrained(net.encoder, encoder, weights)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in pretrained_normalization(encoder))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - 1, batch):  # a batch of one breaks BatchNorm
            idx = perm[i:i + batch]
            if len(idx) < 2:
                continue
            xb = x[idx].float() / 255
            mb = m[idx].float()
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb[flip] = xb[flip].flip(-1)
            mb[flip] = mb[flip].flip(-1)
            seg, cls = net((xb - mean) / std)
            loss = F.binary_cross_entropy_with_logits(seg, mb) + F.cross_entropy(cls, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return lambda xb: net((xb.float() / 255 - mean) / std)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--encoder", default="timm-tf_efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="imagenet, a file, or none")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--only-folds", default=None, help="comma list of fold indices to run (default all)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    weights = None if a.weights in ("none", "None", "") else a.weights
    data = load_arrays(a.dataset, a.image_size)
    folds = data.folds(a.folds, a.seed)
    chosen = range(a.folds) if a.only_folds is None else [int(v) for v in a.only_folds.split(",")]
    rows = []
    for k in chosen:
        t0 = time.perf_counter()
        (xtr, mtr, ytr), (xte, mte, yte) = fold_arrays(data, folds[k], include_val=True)
        predict = train_plain(xtr, mtr, ytr, encoder=a.encoder, weights=weights, n_classes=len(data.class_names),
                              epochs=a.epochs, batch=a.batch_size, lr=a.lr, seed=a.seed + k)
        res = score(predict, xte, mte, yte)
        res.update(fold=k, seconds=time.perf_counter() - t0, n_train=len(xtr), n_test=len(xte))
        rows.append(res)
        print(f"fold {k}: Dice {res['dice']:.3f}  balanced accuracy {res['balanced_accuracy']:.3f}  "
              f"({res['seconds']:.0f}s, train {len(xtr)}, test {len(xte)})", flush=True)
    d = np.array([r["dice"] for r in rows])
    b = np.array([r["balanced_accuracy"] for r in rows])
    print(f"mean over {len(rows)} folds: Dice {d.mean():.3f} (sd {d.std(ddof=1) if len(d) > 1 else 0:.3f}), "
          f"balanced accuracy {b.mean():.3f} (sd {b.std(ddof=1) if len(b) > 1 else 0:.3f})")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"plain_loop_{a.encoder}_{weights or 'none'}.json".replace("/", "_")
    (out / name).write_text(json.dumps({"args": vars(a), "folds": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
