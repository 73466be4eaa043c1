"""``mtunet train`` against a bare PyTorch loop: epoch time per training image and peak memory, one run.

The bare loop is what the project's loop must not be much slower or fatter
than: the same network (smp ``Unet`` + ``aux_params``), the same batch size,
the same decoded images at the same size, Adam, ``BCE + CE`` forward and
backward, nothing else (no augmentation, validation or checkpoints).  The
project side is the real ``mtunet train`` command (data loading and
augmentation, validation, checkpoints, everything).  Both run as separate
processes, alternating (A B, B A, ...), so a busy machine slows both; each
reports its warm epoch time (epochs after the first) per training image and
its peak RSS.

    python benchmarks/bench_train_overhead.py ../shared/data/busi [--rounds 2] [--epochs 3]

Targets (issue 10): time per training image <= 1.15x the bare loop's, peak RSS <= 1.1x.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, median, print_table, print_targets, target_check, write_result  # noqa: E402

BARE = r'''
import json, os, resource, sys, time
import torch, torch.nn.functional as F
sys.path.insert(0, sys.argv[1])
from _study_data import load_arrays
torch.set_num_threads(int(sys.argv[5]))
import segmentation_models_pytorch as smp
from napari_mtunet.encoders import load_pretrained, pretrained_normalization
data = load_arrays(sys.argv[2], int(sys.argv[3]))
x, m, y = data.x, data.m.float(), data.y
enc, epochs, bs = sys.argv[4], int(sys.argv[6]), int(sys.argv[7])
torch.manual_seed(0)
net = smp.Unet(enc, encoder_weights=None, classes=1, aux_params={"classes": len(data.class_names), "dropout": 0.2})
load_pretrained(net.encoder, enc, "imagenet")
mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in pretrained_normalization(enc))
opt = torch.optim.Adam(net.parameters(), 1e-3)
n = len(x)
times = []
for ep in range(epochs):
    t0 = time.perf_counter()
    net.train()
    perm = torch.randperm(n)
    for i in range(0, n - 1, bs):
        idx = perm[i:i + bs]
        if len(idx) < 2:
            continue
        seg, cls = net((x[idx].float() / 255 - mean) / std)
        loss = 5 * F.binary_cross_entropy_with_logits(seg, m[idx]) + F.cross_entropy(cls, y[idx])
        opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - t0)
print("RESULT " + json.dumps({"epoch_s": times, "n_train": n,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

PROJECT = r'''
import json, resource, sys
from napari_mtunet.cli import main
from napari_mtunet.events import Callback
import napari_mtunet.cli as cli
times, n_train = [], {}
class Rec(Callback):
    def on_epoch_end(self, ev):
        times.append(ev.elapsed_s)
orig = cli.TextProgress.__call__
def hook(self, ev):
    if ev.kind == "epoch_end":
        times.append(ev.elapsed_s)
    if ev.kind == "status" and ev.text.startswith("Dataset"):
        n_train["text"] = ev.text
    return orig(self, ev)
cli.TextProgress.__call__ = hook
rc = main(["--threads", sys.argv[5], "train", sys.argv[2], "--out", sys.argv[8], "--encoder", sys.argv[4],
           "--encoder-weights", "imagenet", "--image-size", sys.argv[3], "--epochs", sys.argv[6],
           "--batch-size", sys.argv[7], "--test-fraction", "0", "--patience", "0", "--n-boot", "10", "--quiet"])
from napari_mtunet.checkpoint import read_metadata
meta = read_metadata(sys.argv[8] + "/last.safetensors")
per_epoch = [times[0]] + [b - a for a, b in zip(times, times[1:])]
print("RESULT " + json.dumps({"epoch_s": per_epoch, "n_train": meta["training"]["n_train"], "rc": rc,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run(kind: str, args) -> dict:
    here = str(Path(__file__).resolve().parent)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "run")
        code = BARE if kind == "bare" else PROJECT
        cmd = [sys.executable, "-c", code, here, str(args.dataset), str(args.image_size), args.encoder,
               str(args.threads or 2), str(args.epochs), str(args.batch_size), out]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        raise SystemExit(f"{kind} run failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    res = json.loads(line[-1][7:])
    warm = res["epoch_s"][1:] or res["epoch_s"]
    res["per_image_s"] = median(warm) / res["n_train"]
    return res


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("dataset", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/busi"))
    p.add_argument("--encoder", default="timm-tf_efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.rounds, args.image_size = 2, 1, 64
    started = time.time()
    results: dict[str, list[dict]] = {"bare": [], "mtunet": []}
    for r in range(args.rounds):
        order = ("bare", "mtunet") if r % 2 == 0 else ("mtunet", "bare")
        for kind in order:
            res = run("bare" if kind == "bare" else "project", args)
            results[kind].append(res)
            print(f"round {r + 1} {kind}: {res['per_image_s'] * 1000:.1f} ms per training image "
                  f"({res['n_train']} images), peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    ratios = [m["per_image_s"] / b["per_image_s"] for b, m in zip(results["bare"], results["mtunet"])]
    rss = [m["peak_rss_mb"] / b["peak_rss_mb"] for b, m in zip(results["bare"], results["mtunet"])]
    time_ratio, rss_ratio = median(ratios), median(rss)
    print()
    print_table(["", "ms / training image", "peak RSS MB"],
                [["bare loop", median([b["per_image_s"] for b in results["bare"]]) * 1000,
                  median([b["peak_rss_mb"] for b in results["bare"]])],
                 ["mtunet train", median([m["per_image_s"] for m in results["mtunet"]]) * 1000,
                  median([m["peak_rss_mb"] for m in results["mtunet"]])]])
    targets = [target_check("epoch time per training image vs bare loop", time_ratio, 1.15),
               target_check("peak RSS vs bare loop", rss_ratio, 1.10)]
    print_targets(targets)
    write_result("train_overhead", args, {"results": results, "time_ratio": time_ratio, "rss_ratio": rss_ratio,
                                          "targets": targets}, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
