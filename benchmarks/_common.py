"""Shared helpers for the benchmark scripts (timing, interleaving, tables, JSON).

Every benchmark measures *ratios within one run*: the variants being compared
are interleaved round by round (the order rotates every round), each round
gives one paired ratio, and the median of the paired ratios is reported
together with the median times.  Shared, noisy machines then move both sides
of a ratio together instead of biasing one of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1-2 repeats: proves the script works (smoke test)")
    p.add_argument(
        "--results-dir",
        default=os.environ.get("MTUNET_BENCH_RESULTS", str(DEFAULT_RESULTS)),
        help="where <name>.json is written (default benchmarks/results; env MTUNET_BENCH_RESULTS)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the target ratios use: wall-clock or process CPU time (both are always recorded; "
        "cpu is robust on an overloaded shared machine with --threads 1)",
    )
    return p


def apply_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_total_gib"] = round(int(mem) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
            info["cuda_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            info["cuda_runtime"] = torch.version.cuda
    except Exception:  # pragma: no cover - torch missing
        pass
    try:
        import segmentation_models_pytorch as smp

        info["smp"] = smp.__version__
    except Exception:
        pass
    return info


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def interleaved(
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    *,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    log: bool = True,
    budget_s: float | None = None,
    max_repeats: int | None = None,
    cpu_out: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Time each variant ``repeats`` times, interleaved, rotating the order every round.

    ``warmup`` untimed rounds run first (first calls allocate optimizer state,
    build oneDNN primitives, autotune cuDNN ...).  ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before reading the clock.
    At least ``repeats`` rounds run; with ``budget_s`` more rounds follow
    (up to ``max_repeats``) while the timed rounds have taken less than
    ``budget_s`` seconds (cheap variants get more rounds on noisy machines).
    Returns wall-clock times; ``cpu_out`` (a dict) receives the process CPU
    time of each call as well (``time.process_time``: all threads of this
    process, not the time it waited for a core -- robust on an overloaded
    shared machine when torch runs one thread; it excludes child processes).
    """
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    if sync:
        sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    limit = repeats if budget_s is None else max(repeats, max_repeats or 50)
    for r in range(limit):
        if r >= repeats and time.perf_counter() - t_start > budget_s:  # type: ignore[operator]
            break
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            c0 = time.process_time()
            t0 = time.perf_counter()
            variants[n]()
            if sync:
                sync()
            times[n].append(time.perf_counter() - t0)
            if cpu_out is not None:
                cpu_out.setdefault(n, []).append(time.process_time() - c0)
        if log:
            print(
                f"  round {r + 1}: " + ", ".join(f"{n}={times[n][-1]:.3f}s" for n in names),
                flush=True,
            )
    return times


def paired_ratios(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    return [a / b for a, b in zip(times[num], times[den])]


def ratio_summary(times: dict[str, list[float]], num: str, den: str) -> dict[str, Any]:
    rs = paired_ratios(times, num, den)
    return {
        "numerator": num,
        "denominator": den,
        "median": median(rs),
        "min": min(rs) if rs else None,
        "max": max(rs) if rs else None,
        "paired": rs,
    }


def target_check(name: str, measured: float, target: float, op: str = "<=") -> dict[str, Any]:
    ok = measured <= target if op == "<=" else measured >= target
    return {"name": name, "measured": round(float(measured), 4), "target": f"{op} {target}", "pass": bool(ok)}


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        if isinstance(v, bool):
            return "PASS" if v else "MISS"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def print_targets(targets: list[dict[str, Any]]) -> None:
    if not targets:
        return
    print()
    print_table(["target", "measured", "goal", "result"], [[t["name"], t["measured"], t["target"], t["pass"]] for t in targets])


def write_result(name: str, args: argparse.Namespace, payload: dict[str, Any], started: float) -> Path:
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "quick": bool(getattr(args, "quick", False)),
        "command": command_line(),
        "machine": machine_info(),
        "started_unix": round(started, 1),
        "duration_s": round(time.time() - started, 1),
        **payload,
    }
    doc.setdefault("targets", [])
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path}")
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
