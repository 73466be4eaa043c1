"""GPU throughput: fp32 vs automatic mixed precision (+ channels_last, optionally torch.compile).

For each encoder (default mobilenet_v2 and vgg16) the multi-task UNet is
trained and run for inference at 256^2, batch 32, on random tensors already
on the GPU (this measures the model, not the loader).  Variants, each with
its own model + Adam, interleaved round by round (order rotating):

- ``fp32``: plain float32, contiguous (NCHW) -- what the Trainer does with
  ``amp=False``; PyTorch's default TF32 settings are left as they are and
  recorded in the JSON;
- ``fp16_cl``: ``torch.autocast(float16)`` + ``GradScaler`` + channels_last
  (what the Trainer does with ``amp=True, channels_last=True``);
- ``bf16_cl``: ``torch.autocast(bfloat16)`` + channels_last (no scaler);
- ``bf16_cl_compiled``: the same through ``torch.compile`` (``--compile``;
  compilation happens in the untimed warm-up).

Training = zero_grad, forward, ``MultiTaskLoss`` (5 * BCE + CE), backward,
Adam step.  Each timed unit runs ``--steps`` iterations followed by
``torch.cuda.synchronize()``.  Reported: images/s and peak memory per
variant, and the paired speed-up over fp32.  Target: AMP >= 2x fp32.

Without a CUDA device the script prints "no CUDA device: GPU benchmark
skipped" and writes a JSON that says so; with ``--quick`` it also runs every
variant's code path on the CPU at a tiny size (``dry_run``; CPU timings mean
nothing here), which is what the smoke test checks.

    python benchmarks/bench_gpu.py                 # on a CUDA machine
    python benchmarks/bench_gpu.py --compile       # + torch.compile variant
    python benchmarks/bench_gpu.py --quick         # smoke test (CPU dry run without CUDA)
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import _common as C
import torch

from napari_mtunet.config import ModelConfig
from napari_mtunet.model import build_model

NAME = "gpu"
SKIP_MESSAGE = "no CUDA device: GPU benchmark skipped"


def make_loss():
    from napari_mtunet.training.losses import MultiTaskLoss

    return MultiTaskLoss("both", w_seg=5.0, w_cls=1.0, seg_loss="bce")


def variant_specs(compile_: bool, device: torch.device) -> dict[str, dict]:
    specs = {
        "fp32": {"dtype": None, "channels_last": False, "scaler": False, "compile": False},
        "fp16_cl": {"dtype": torch.float16, "channels_last": True, "scaler": True, "compile": False},
        "bf16_cl": {"dtype": torch.bfloat16, "channels_last": True, "scaler": False, "compile": False},
    }
    if device.type == "cpu":  # float16 autocast on CPU exists but is slow/partial: dry-run it anyway
        pass
    if compile_:
        specs["bf16_cl_compiled"] = {"dtype": torch.bfloat16, "channels_last": True, "scaler": False, "compile": True}
    return specs


def build_variant(encoder: str, spec: dict, device: torch.device, train: bool, size: int, batch: int, steps: int):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_name=encoder, encoder_weights=None, task="both", num_classes=3)).to(device)
    fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    data = {
        "image": x,
        "mask": (torch.rand(batch, 1, size, size, device=device) > 0.7).float(),
        "label": torch.randint(0, 3, (batch,), device=device),
    }
    net = torch.compile(model) if spec["compile"] else model
    ctx = (lambda: torch.autocast(device_type=device.type, dtype=spec["dtype"])) if spec["dtype"] else nullcontext
    if train:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler(device.type, enabled=spec["scaler"])
        loss_fn = make_loss().to(device)

        def run():
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                with ctx():
                    out = net(x)
                    parts = loss_fn(out, data)
                scaler.scale(parts.total).backward()
                scaler.step(opt)
                scaler.update()
    else:
        model.eval()

        def run():
            with torch.inference_mode():
                for _ in range(steps):
                    with ctx():
                        net(x)

    return run, model


def bench(encoder: str, device: torch.device, train: bool, size: int, batch: int, steps: int, repeats: int,
          compile_: bool) -> dict:
    specs = variant_specs(compile_, device)
    runs, peaks = {}, {}
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    for name, spec in specs.items():
        run, _ = build_variant(encoder, spec, device, train, size, batch, steps)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run()  # warm-up: cuDNN autotuning, compilation, optimizer state
        if sync:
            sync()
            peaks[name] = torch.cuda.max_memory_allocated() / 2**20
        runs[name] = run
    what = "train" if train else "infer"
    print(f"[{encoder} {what}] {size}^2 batch {batch}, {steps} steps per timed unit", flush=True)
    t = C.interleaved(runs, repeats, warmup=1, sync=sync)
    ips = {k: batch * steps / C.median(v) for k, v in t.items()}
    speedups = {k: C.ratio_summary(t, "fp32", k) for k in t if k != "fp32"}  # fp32 time / variant time
    return {
        "encoder": encoder,
        "mode": what,
        "times_s": t,
        "images_per_s": ips,
        "peak_mem_mib": peaks,
        "speedup_vs_fp32": {k: v["median"] for k, v in speedups.items()},
        "speedup_paired": speedups,
    }


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--encoders", default="mobilenet_v2,vgg16")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="iterations per timed unit")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="add a torch.compile'd bf16 + channels_last variant")
    p.add_argument("--device", default="cuda:0")
    args = p.parse_args()
    started = time.time()
    payload: dict = {"skipped": False}
    if not torch.cuda.is_available():
        print(SKIP_MESSAGE, flush=True)
        payload = {"skipped": True, "reason": SKIP_MESSAGE, "results": [], "targets": []}
        if not args.quick:
            C.write_result(NAME, args, payload, started)
            return
        print("--quick: dry run of every variant's code path on the CPU at 32^2, batch 2 (timings meaningless)")
        device = torch.device("cpu")
        args.size, args.batch, args.steps, args.repeats = 32, 2, 1, 1
        if args.encoders == p.get_default("encoders"):
            args.encoders = "mobilenet_v2"
    else:
        device = torch.device(args.device)
        torch.backends.cudnn.benchmark = True
        if args.quick:
            args.size, args.batch, args.steps, args.repeats = 64, 4, 2, 2
    C.apply_threads(args.threads)
    results = []
    for enc in [e for e in args.encoders.split(",") if e]:
        for train in (True, False):
            results.append(bench(enc, device, train, args.size, args.batch, args.steps, args.repeats, args.compile))
    rows, targets = [], []
    for r in results:
        for k, v in r["images_per_s"].items():
            rows.append([r["encoder"], r["mode"], k, v, r["peak_mem_mib"].get(k, float("nan")),
                         r["speedup_vs_fp32"].get(k, 1.0)])
        if not payload["skipped"]:
            best_amp = max(v for k, v in r["speedup_vs_fp32"].items() if not k.endswith("compiled"))
            targets.append(C.target_check(f"{r['encoder']} {r['mode']}: best AMP (eager) / fp32", best_amp, 2.0, ">="))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    print(f"\n{device_name}: {args.size}^2 batch {args.batch}, medians over {args.repeats} interleaved rounds")
    C.print_table(["encoder", "mode", "variant", "images/s", "peak MiB", "speed-up vs fp32"], rows)
    C.print_targets(targets)
    if payload["skipped"]:
        print(f"\n{SKIP_MESSAGE} (the rows above are a CPU dry run of the code path, not a measurement)")
    tf32 = {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    payload.update(
        {
            "device": device_name,
            "dry_run": payload["skipped"],
            "config": {"size": args.size, "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
                       "compile": args.compile, "tf32": tf32},
            "results": results,
            "targets": targets,
        }
    )
    C.write_result(NAME, args, payload, started)


if __name__ == "__main__":
    main()
