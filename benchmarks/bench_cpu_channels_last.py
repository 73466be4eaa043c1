"""CPU memory format: channels_last vs NCHW for the multi-task UNet (train step and inference).

Why it exists: the Predictor runs the network channels_last on the CPU
(oneDNN), while the Trainer enables channels_last only on CUDA.  Same model
weights and data in both layouts, interleaved rounds, process CPU time by
default (``--clock wall`` for wall time); train step = zero_grad, forward,
``MultiTaskLoss``, backward, Adam step.  Reported: channels_last / NCHW
(below 1 = channels_last is cheaper).

    python benchmarks/bench_cpu_channels_last.py --threads 1
    python benchmarks/bench_cpu_channels_last.py --quick
"""

from __future__ import annotations

import time

import _common as C
import torch

from napari_mtunet.config import ModelConfig
from napari_mtunet.model import build_model

NAME = "cpu_channels_last"


def bench(encoder: str, size: int, batch: int, repeats: int, clock: str) -> dict:
    from napari_mtunet.training.losses import MultiTaskLoss

    out: dict = {"encoder": encoder}
    for mode in ("train", "infer"):
        runs = {}
        for layout in ("nchw", "channels_last"):
            torch.manual_seed(0)
            m = build_model(ModelConfig(encoder_name=encoder, encoder_weights=None))
            x = torch.rand(batch, 3, size, size)
            if layout == "channels_last":
                m = m.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            data = {"mask": (torch.rand(batch, 1, size, size) > 0.5).float(), "label": torch.randint(0, 3, (batch,))}
            if mode == "train":
                m.train()
                opt = torch.optim.Adam(m.parameters(), lr=1e-3)
                loss_fn = MultiTaskLoss("both")

                def run(m=m, x=x, opt=opt, loss_fn=loss_fn, data=data):
                    opt.zero_grad(set_to_none=True)
                    loss_fn(m(x), data).total.backward()
                    opt.step()
            else:
                m.eval()

                def run(m=m, x=x):
                    with torch.inference_mode():
                        m(x)
            runs[layout] = run
        print(f"[{encoder} {mode}] {size}^2 batch {batch}", flush=True)
        cpu: dict = {}
        wall = C.interleaved(runs, repeats, warmup=1, cpu_out=cpu, log=False)
        t = cpu if clock == "cpu" else wall
        out[mode] = {
            "clock": clock,
            "wall_s": wall,
            "cpu_s": cpu,
            "median_s": {k: C.median(v) for k, v in t.items()},
            "ratio_channels_last_vs_nchw": C.ratio_summary(t, "channels_last", "nchw"),
        }
    return out


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.set_defaults(clock="cpu")
    p.add_argument("--encoders", default="mobilenet_v2,vgg16")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.quick:
        args.size, args.batch, args.repeats = 32, 2, 1
        if args.encoders == p.get_default("encoders"):
            args.encoders = "mobilenet_v2"
    C.apply_threads(args.threads)
    started = time.time()
    results = [bench(e, args.size, args.batch, args.repeats, args.clock) for e in args.encoders.split(",") if e]
    rows = []
    for r in results:
        for mode in ("train", "infer"):
            d = r[mode]
            rows.append([r["encoder"], mode, d["median_s"]["nchw"], d["median_s"]["channels_last"],
                         d["ratio_channels_last_vs_nchw"]["median"]])
    print(f"\n{args.size}^2 batch {args.batch}, {args.repeats} interleaved rounds, medians of {args.clock} time (s)")
    C.print_table(["encoder", "mode", "nchw_s", "channels_last_s", "channels_last/nchw"], rows)
    C.write_result(
        NAME,
        args,
        {"config": {"size": args.size, "batch": args.batch, "repeats": args.repeats, "clock": args.clock},
         "results": results, "targets": []},
        started,
    )


if __name__ == "__main__":
    main()
