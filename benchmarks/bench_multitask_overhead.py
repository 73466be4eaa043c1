"""Multi-task overhead: is the joint model cheaper than the alternatives?

For each encoder, three models are built (random init, same encoder):

- ``both``: the multi-task UNet (encoder -> decoder + classification head);
- ``seg``:  the plain seg-only UNet (the single-task baseline);
- ``cls``:  a cls-only network (encoder + head, no decoder).

Training step = zero_grad, forward, the project's loss
(:class:`napari_mtunet.training.MultiTaskLoss`: ``5 * BCEWithLogits + 1 * CE``
for ``both``; BCE for ``seg``; CE for ``cls``), backward, Adam step.
Inference = one ``torch.inference_mode`` forward in eval mode.

Each round times ``both``, ``seg`` and ``cls`` interleaved (rotating order)
and gives two paired ratios:

- ``both / seg``            target <= 1.05 (the joint head is nearly free);
- ``both / (seg + cls)``    target <= 0.60 (one joint model vs two models).

Forward FLOPs of each model (``torch.utils.flop_counter``) are reported as the
noise-free expectation of the second ratio: with ``both ~ seg = E + D`` and
``cls = E`` (E encoder, D decoder), ``both/(seg+cls) = (E+D)/(2E+D)``, which
can only reach 0.60 when the decoder costs at most half the encoder.

    python benchmarks/bench_multitask_overhead.py            # 256^2, batch 8, both encoders
    python benchmarks/bench_multitask_overhead.py --quick    # smoke test
"""

from __future__ import annotations

import time

import _common as C
import torch

from napari_mtunet.config import ModelConfig
from napari_mtunet.model import build_model

NAME = "multitask_overhead"


def make_loss(task: str):
    try:
        from napari_mtunet.training.losses import MultiTaskLoss

        return MultiTaskLoss(task, w_seg=5.0, w_cls=1.0, seg_loss="bce"), "napari_mtunet.training.MultiTaskLoss"
    except ImportError:  # training package not installed: the same loss by hand
        import torch.nn.functional as F

        w_seg, w_cls = (5.0, 1.0) if task == "both" else ((1.0, 0.0) if task == "seg" else (0.0, 1.0))

        def loss(out, batch):
            total = 0.0
            if out.seg is not None and w_seg:
                total = total + w_seg * F.binary_cross_entropy_with_logits(out.seg, batch["mask"])
            if out.cls is not None and w_cls:
                total = total + w_cls * F.cross_entropy(out.cls, batch["label"])
            return type("P", (), {"total": total})()

        return loss, "BCEWithLogits + CE (fallback)"


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


def bench_encoder(encoder: str, size: int, batch: int, repeats: int, warmup: int, modes: list[str],
                  budget_s: float | None = None, clock: str = "wall") -> dict:
    torch.manual_seed(0)
    models = {
        task: build_model(ModelConfig(encoder_name=encoder, encoder_weights=None, task=task, num_classes=3))
        for task in ("both", "seg", "cls")
    }
    x = torch.rand(batch, 3, size, size)
    data = {
        "image": x,
        "mask": (torch.rand(batch, 1, size, size) > 0.7).float(),
        "label": torch.randint(0, 3, (batch,)),
        "has_mask": torch.ones(batch, dtype=torch.bool),
        "has_label": torch.ones(batch, dtype=torch.bool),
    }
    params = {t: sum(p.numel() for p in m.parameters()) for t, m in models.items()}
    flops = {t: forward_flops(m, x) for t, m in models.items()}
    res: dict = {
        "encoder": encoder,
        "params": params,
        "forward_gflops": {t: round(f / 1e9, 3) for t, f in flops.items()},
        "flops_ratio_both_vs_seg": flops["both"] / flops["seg"],
        "flops_ratio_both_vs_seg_plus_cls": flops["both"] / (flops["seg"] + flops["cls"]),
        "decoder_to_encoder_flops": (flops["seg"] - flops["cls"]) / flops["cls"],
    }

    if "train" in modes:
        steps = {}
        loss_name = ""
        for task, m in models.items():
            m.train()
            opt = torch.optim.Adam(m.parameters(), lr=1e-3)
            loss_fn, loss_name = make_loss(task)

            def step(m=m, opt=opt, loss_fn=loss_fn):
                opt.zero_grad(set_to_none=True)
                out = m(x)
                parts = loss_fn(out, data)
                parts.total.backward()
                opt.step()

            steps[task] = step
        print(f"[{encoder}] train step, {size}^2 batch {batch}, loss {loss_name}", flush=True)
        wall: dict = {}
        cpu: dict = {}
        wall.update(C.interleaved(steps, repeats, warmup=warmup, budget_s=budget_s, max_repeats=15, cpu_out=cpu))
        for d in (wall, cpu):
            d["seg+cls"] = [a + b for a, b in zip(d["seg"], d["cls"])]
        t = cpu if clock == "cpu" else wall
        res["train"] = {
            "clock": clock,
            "wall_s": wall,
            "cpu_s": cpu,
            "wall_ratio_both_vs_seg": C.ratio_summary(wall, "both", "seg")["median"],
            "wall_ratio_both_vs_seg_plus_cls": C.ratio_summary(wall, "both", "seg+cls")["median"],
            "cpu_ratio_both_vs_seg": C.ratio_summary(cpu, "both", "seg")["median"],
            "cpu_ratio_both_vs_seg_plus_cls": C.ratio_summary(cpu, "both", "seg+cls")["median"],
            "loss": loss_name,
            "times_s": t,
            "median_s": {k: C.median(v) for k, v in t.items()},
            "images_per_s": {k: batch / C.median(v) for k, v in t.items()},
            "ratio_both_vs_seg": C.ratio_summary(t, "both", "seg"),
            "ratio_both_vs_seg_plus_cls": C.ratio_summary(t, "both", "seg+cls"),
        }

    if "infer" in modes:
        fwd = {}
        for task, m in models.items():
            m.eval()

            def f(m=m):
                with torch.inference_mode():
                    m(x)

            fwd[task] = f
        print(f"[{encoder}] inference forward, {size}^2 batch {batch}", flush=True)
        wall: dict = {}
        cpu: dict = {}
        wall.update(C.interleaved(fwd, repeats, warmup=warmup, budget_s=budget_s, max_repeats=15, cpu_out=cpu))
        for d in (wall, cpu):
            d["seg+cls"] = [a + b for a, b in zip(d["seg"], d["cls"])]
        t = cpu if clock == "cpu" else wall
        res["infer"] = {
            "clock": clock,
            "wall_s": wall,
            "cpu_s": cpu,
            "wall_ratio_both_vs_seg": C.ratio_summary(wall, "both", "seg")["median"],
            "wall_ratio_both_vs_seg_plus_cls": C.ratio_summary(wall, "both", "seg+cls")["median"],
            "cpu_ratio_both_vs_seg": C.ratio_summary(cpu, "both", "seg")["median"],
            "cpu_ratio_both_vs_seg_plus_cls": C.ratio_summary(cpu, "both", "seg+cls")["median"],
            "times_s": t,
            "median_s": {k: C.median(v) for k, v in t.items()},
            "images_per_s": {k: batch / C.median(v) for k, v in t.items()},
            "ratio_both_vs_seg": C.ratio_summary(t, "both", "seg"),
            "ratio_both_vs_seg_plus_cls": C.ratio_summary(t, "both", "seg+cls"),
        }
    return res


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--encoders", default="mobilenet_v2,vgg16")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="minimum timed interleaved rounds per mode")
    p.add_argument("--budget-s", type=float, default=60.0,
                   help="keep adding rounds (up to 15) while the timed rounds took less than this (0: exactly --repeats)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--modes", default="train,infer")
    args = p.parse_args()
    if args.quick:
        args.size, args.batch, args.repeats, args.warmup, args.budget_s = 32, 2, 1, 1, 0
        if args.encoders == p.get_default("encoders"):
            args.encoders = "mobilenet_v2"
    C.apply_threads(args.threads)
    started = time.time()
    modes = [m for m in args.modes.split(",") if m]
    results = [
        bench_encoder(e, args.size, args.batch, args.repeats, args.warmup, modes, args.budget_s or None, args.clock) for e in args.encoders.split(",") if e
    ]

    rows, targets = [], []
    for r in results:
        for mode in modes:
            d = r[mode]
            ms = d["median_s"]
            r1, r2 = d["ratio_both_vs_seg"]["median"], d["ratio_both_vs_seg_plus_cls"]["median"]
            rows.append(
                [r["encoder"], mode, ms["both"], ms["seg"], ms["cls"], ms["seg+cls"], r1, r2,
                 r["flops_ratio_both_vs_seg_plus_cls"]]
            )
            targets.append(C.target_check(f"{r['encoder']} {mode}: both/seg", r1, 1.05))
            targets.append(C.target_check(f"{r['encoder']} {mode}: both/(seg+cls)", r2, 0.60))
    print(f"\n{args.size}^2, batch {args.batch}, >= {args.repeats} interleaved rounds, medians ({args.clock} s); ratios = median of paired ratios")
    C.print_table(
        ["encoder", "mode", "both_s", "seg_s", "cls_s", "seg+cls_s", "both/seg", "both/(seg+cls)", "FLOPs both/(seg+cls)"],
        rows,
    )
    C.print_targets(targets)
    C.write_result(
        NAME,
        args,
        {
            "config": {"size": args.size, "batch": args.batch, "repeats": args.repeats, "warmup": args.warmup,
                       "budget_s": args.budget_s, "clock": args.clock,
                       "modes": modes, "optimizer": "Adam(lr=1e-3)", "num_classes": 3},
            "results": results,
            "targets": targets,
        },
        started,
    )


if __name__ == "__main__":
    main()
