"""napari responsiveness: the longest GUI-thread gap in each step a user takes, idle and on a loaded machine.

A ``QTimer`` heartbeat fires every ``--tick-ms`` (10 ms) on napari's GUI
thread; a *gap* is the time between two ticks minus the interval (the time
the window could not respond).  Each condition runs in a fresh Python
process (the first dock, the first model and the first prediction pay
one-time costs, as in a real session), in a shown napari window of
1600 x 1000 with one real BUSI image (``benign (108)``):

- ``idle``:          nothing happens (the machine's own noise floor);
- ``dock``:          the Predict widget is docked (the compute process starts and imports torch & co.),
                     measured until it is ready and 4 s more;
- ``set_model``:     a checkpoint is chosen (its header is read, the line under it filled);
- ``predict``:       the first prediction of the image, until its Labels layer is shown (+0.5 s);
- ``predict_again``: two more predictions (the layer is updated in place);
- ``dock_train`` / ``dock_annotate`` / ``dock_dataset``: the other widgets are docked (+1.5 s each);
- ``dataset_check``: Load and check on the BUSI subset (300 images; the synthetic phantom where BUSI is absent);
- ``train``:         a short training run from the Train widget (BUSI, ``--train-samples`` images), to its end;
- ``napari alone``:  in another fresh process, ``viewer.add_labels`` of the image's size called on the GUI
  thread, twice: the first Labels layer of a session and a later one (the floor any plugin pays to show a
  result as a new layer).

``cpu_in_worst_ms`` is the CPU time napari's process used during the worst gap (all its threads: software
OpenGL renders in threads of its own): a gap much longer than it was spent waiting for a core.

Conditions: ``idle`` (nothing else started) and ``load`` (``--load-procs`` busy Python processes, each
spinning a core, for the whole run, like a shared workstation).  Target: no gap over 100 ms in any step
(idle and dock-time noise of the machine itself is reported, not targeted: ``idle``).

``--pyspy`` starts a watchdog process that runs ``py-spy dump`` on napari's process whenever the heartbeat
is more than 100 ms late, and prints what every thread (and who held the GIL) was doing then.

    xvfb-run -a -s "-screen 0 1920x1200x24" python benchmarks/bench_napari_responsiveness.py --pyspy
    python benchmarks/bench_napari_responsiveness.py --quick        # one condition, tiny, in this process
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import _common as C  # noqa: E402

NAME = "napari_responsiveness"
TARGET_MS = 100.0
STEPS = ("dock", "set_model", "predict", "predict_again", "dock_train", "dock_annotate", "dock_dataset",
         "dataset_check", "train")
IMAGE = "benign (108)"


# --------------------------------------------------------------------------- measuring


class Heartbeat:
    """A QTimer on the GUI thread; each tick records the time, the GUI thread's CPU time and the process's (a
    gap with the GUI thread busy is work on it; with the process busy but not the GUI thread, rendering threads
    of software OpenGL or another thread; with neither, waiting: for a core, or for the GIL).  With a
    ``beat_file`` every tick is also written to shared memory, for the py-spy watchdog."""

    def __init__(self, interval_ms: int, beat_file: str | None = None):
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000.0
        self.ticks: list[float] = []
        self.cpu: list[float] = []
        self.proc_cpu: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.mm = None
        if beat_file:
            with open(beat_file, "r+b") as fh:
                self.mm = mmap.mmap(fh.fileno(), 8)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.ticks.append(now)
        self.cpu.append(time.thread_time())
        self.proc_cpu.append(time.process_time())
        if self.mm is not None:
            self.mm[0:8] = struct.pack("d", now)

    def start(self) -> None:
        self._tick()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self._tick()

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Gap statistics of the ticks between ``t0`` and ``t1``, and of the gap around ``t0`` (a step's first
        action runs synchronously: the gap it causes starts at the last tick before it)."""
        idx = [i for i, t in enumerate(self.ticks) if t0 <= t <= t1]
        before = [i for i, t in enumerate(self.ticks) if t < t0]
        if before and idx:
            idx = [before[-1], *idx]
        if len(idx) < 2:
            return {"ticks": len(idx), "worst_gap_ms": 0.0, "p99_gap_ms": 0.0, "gaps_over_100ms": 0}
        pairs = list(zip(idx, idx[1:]))
        gaps = [self.ticks[b] - self.ticks[a] for a, b in pairs]
        busy = [(self.cpu[b] - self.cpu[a]) / g if g > 0 else 0.0 for (a, b), g in zip(pairs, gaps)]
        # all threads of napari's process (software OpenGL renders in threads of its own)
        pbusy = [(self.proc_cpu[b] - self.proc_cpu[a]) / g if g > 0 else 0.0 for (a, b), g in zip(pairs, gaps)]
        stalls = sorted(max(0.0, g - self.interval) for g in gaps)
        w = max(range(len(gaps)), key=gaps.__getitem__)
        n = len(stalls)
        return {
            "ticks": len(idx), "duration_s": t1 - t0,
            "worst_gap_ms": 1000 * stalls[-1], "worst_at_s": self.ticks[pairs[w][0]] - t0,
            "worst_gui_busy": busy[w], "worst_process_busy": pbusy[w],
            "p99_gap_ms": 1000 * stalls[min(n - 1, int(0.99 * n))],
            "gaps_over_100ms": sum(1 for s in stalls if s > 0.1),
            "gaps_over_50ms": sum(1 for s in stalls if s > 0.05),
            "worst_starts_at": self.ticks[pairs[w][0]],
        }


def watchdog(pid: int, beat_file: str, out: str) -> None:  # pragma: no cover - a helper process
    """Run ``py-spy dump`` on ``pid`` whenever its heartbeat is more than 100 ms late (once per gap)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with open(beat_file, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 8, access=mmap.ACCESS_READ)
    dumped = None
    with open(out, "a", encoding="utf-8") as log:
        while True:
            time.sleep(0.02)
            try:
                os.kill(pid, 0)
            except OSError:
                return
            last = struct.unpack("d", mm[0:8])[0]
            if last and time.perf_counter() - last > 0.1 and dumped != last:
                dumped = last
                t0 = time.perf_counter()
                r = subprocess.run([pyspy, "dump", "--pid", str(pid)], capture_output=True, text=True)
                log.write(json.dumps({"late_since": last, "at": t0, "late_ms": 1000 * (t0 - last),
                                      "dump": r.stdout + r.stderr}) + "\n")
                log.flush()


def summarize_dumps(path: Path, marks: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """Each py-spy dump: the step, how late the heartbeat was, and the top frames of the threads."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        d = json.loads(line)
        step = next((name for t, name in reversed(marks) if t <= d["late_since"]), "start")
        threads, cur = [], None
        for ln in d["dump"].splitlines():
            if ln.startswith("Thread "):
                cur = {"thread": ln.strip(), "frames": []}
                threads.append(cur)
            elif cur is not None and ln.startswith("    ") and len(cur["frames"]) < 6:
                cur["frames"].append(ln.strip())
        out.append({"step": step, "late_ms": round(d["late_ms"]), "threads": threads})
    return out


# --------------------------------------------------------------------------- one condition (a fresh process)


def run_condition(args: argparse.Namespace, condition: str) -> dict[str, Any]:
    """The user's steps in this process, with ``condition``'s extra load; returns the steps' gap statistics."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load_procs)] \
        if condition.startswith("load") else []
    tmp = Path(tempfile.mkdtemp(prefix="mtunet-resp-"))
    beat_file, dump_file, dog = None, tmp / "pyspy.jsonl", None
    try:
        if args.pyspy:
            beat_file = str(tmp / "beat")
            Path(beat_file).write_bytes(b"\0" * 8)
            dog = subprocess.Popen([sys.executable, __file__, "--watchdog", str(os.getpid()), beat_file,
                                    str(dump_file)])
        return _steps(args, condition, tmp, beat_file, dump_file)
    finally:
        for p in busy:
            p.kill()
        if dog is not None:
            dog.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _steps(args: argparse.Namespace, condition: str, tmp: Path, beat_file: str | None,
           dump_file: Path) -> dict[str, Any]:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_mtunet import compute, layer_meta
    from napari_mtunet.data import read_image
    from napari_mtunet.widgets import _job
    from napari_mtunet.widgets._session import state_for
    from napari_mtunet.widgets._warmup import warm_up_done

    errors: list[str] = []
    _job.notify_error = errors.append  # record instead of popping notifications
    _job.notify_info = lambda *_: None
    busi = find_busi(args)
    if busi is not None:
        image = read_image(busi / "benign" / f"{IMAGE}.png")
    else:  # no BUSI here (a CI machine): the synthetic phantom, same steps
        from napari_mtunet.sample_data import write_phantom_dataset

        busi = write_phantom_dataset(tmp / "phantom", n=max(24, args.train_samples), size=128, seed=0)
        image = read_image(sorted((busi / "images").iterdir())[0])

    viewer = napari.Viewer(show=not args.hidden)
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    viewer.add_image(image, name=IMAGE, rgb=image.ndim == 3)
    hb = Heartbeat(args.tick_ms, beat_file)
    marks: list[tuple[float, str]] = []
    windows: dict[str, tuple[float, float]] = {}
    done: dict[str, bool] = {}

    def spin(seconds: float) -> None:
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            app.processEvents()
            time.sleep(0.001)

    def until(cond, timeout: float) -> bool:
        t_end = time.perf_counter() + timeout
        while not cond():
            if time.perf_counter() > t_end:
                return False
            app.processEvents()
            time.sleep(0.001)
        return True

    def step(name: str, action, cond=lambda: True, after_s: float = 0.5) -> None:
        t0 = time.perf_counter()
        marks.append((t0, name))
        action()
        done[name] = until(cond, args.timeout_s)
        spin(after_s)
        windows[name] = (t0, time.perf_counter())
        print(f"  [{condition}] {name}: {windows[name][1] - t0:.1f} s", flush=True)

    def prediction_layer() -> Any:
        for lyr in viewer.layers:
            rec = layer_meta.read(lyr.metadata)
            if rec is not None and rec.kind == "prediction" and rec.source_layer == IMAGE:
                return lyr
        return None

    spin(1.0)  # the window settles
    hb.start()
    step("idle", lambda: None, after_s=args.idle_s)
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[: mask.shape[0] // 2] = 1
    if condition.endswith("/napari"):  # napari alone: its first Labels layer of a session (the floor of a result)
        step("napari_add_labels_first", lambda: viewer.add_labels(mask, name="napari alone", opacity=0.5))
        step("napari_add_labels", lambda: viewer.add_labels(mask, name="napari alone 2", opacity=0.5))
        hb.stop()
        out = {"condition": condition, "steps": {n: hb.window(*w) for n, w in windows.items()}, "errors": [],
               "napari_imported_torch": "torch" in sys.modules, "loadavg_at_end": os.getloadavg()[0]}
        viewer.close()
        return out
    docks: dict[str, Any] = {}

    def dock(name: str) -> None:
        docks[name] = viewer.window.add_plugin_dock_widget("napari-mtunet", name)[1]

    step("dock", lambda: dock("Predict"), lambda: warm_up_done() and not state_for(viewer).overlay.prewarming,
         after_s=args.after_dock_s)
    pw = docks["Predict"]
    step("set_model", lambda: setattr(pw.checkpoint, "value", str(args.model)), after_s=1.5)
    pw.image_layer.setCurrentText(IMAGE)
    pw.device.setCurrentText("cpu")
    step("predict", pw.predict, lambda: not pw.busy)
    step("predict_again", lambda: (pw.predict(), until(lambda: not pw.busy, args.timeout_s), pw.predict()),
         lambda: not pw.busy)
    step("dock_train", lambda: dock("Train"), after_s=1.5)
    step("dock_annotate", lambda: dock("Annotate & fine-tune"), after_s=1.5)
    step("dock_dataset", lambda: dock("Dataset"), after_s=1.5)
    dw, tw = docks["Dataset"], docks["Train"]
    dw.root.value = str(busi)
    step("dataset_check", dw.load, lambda: not dw.busy)
    tw.data_root.value = str(busi)
    tw.out_dir.value = str(tmp / "runs")
    tw.encoder.setCurrentText("timm-tf_efficientnet_lite0")
    tw.encoder_weights.setCurrentText("none")
    tw.image_size.setValue(args.image_size)
    tw.epochs.setValue(args.epochs)
    tw.batch_size.setValue(8)
    tw.max_samples.setValue(args.train_samples)
    tw.val_fraction.setValue(0.25)
    tw.test_fraction.setValue(0.0)
    tw.device.setCurrentText("cpu")
    step("train", tw.start, lambda: not tw.busy)
    hb.stop()
    spin(0.3)
    results: dict[str, Any] = {}
    for name, (t0, t1) in windows.items():
        res = hb.window(t0, t1)
        res["completed"] = done.get(name, True)
        results[name] = res
    results["predict"]["labels_added"] = prediction_layer() is not None
    results["train"]["checkpoint"] = bool(tw.best_checkpoint)
    out = {"condition": condition, "steps": results, "errors": errors,
           "napari_imported_torch": "torch" in sys.modules,
           "compute_process": dict(getattr(compute.client(start=False), "info", {}) or {}),
           "loadavg_at_end": os.getloadavg()[0]}
    if args.pyspy:
        out["pyspy"] = summarize_dumps(dump_file, marks)
    viewer.close()
    compute.shutdown()
    return out


def find_busi(args: argparse.Namespace) -> Path | None:
    """The BUSI subset (``--busi``, ``MTUNET_BUSI`` or ../shared/data/busi); None when absent."""
    here = Path(__file__).resolve().parents[1]
    for c in (args.busi, os.environ.get("MTUNET_BUSI"), here.parent / "shared" / "data" / "busi", "/work/shared/data/busi"):
        if c and (Path(c) / "Dataset_BUSI_with_GT").is_dir():
            return Path(c) / "Dataset_BUSI_with_GT"
        if c and Path(c).name == "Dataset_BUSI_with_GT" and Path(c).is_dir():
            return Path(c)
    return None


def tiny_model(folder: Path) -> Path:
    """A small random-init checkpoint (the model's quality does not matter here, its size does)."""
    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    model = build_model(ModelConfig(encoder_name="timm-tf_efficientnet_lite0", encoder_weights=None,
                                    class_names=["benign", "malignant", "normal"]), Preprocessing(image_size=128))
    folder.mkdir(parents=True, exist_ok=True)
    return Path(save_checkpoint(folder / "best.safetensors", model))


# --------------------------------------------------------------------------- the report


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--conditions", default=None, help="comma-separated: idle,load (default both; --quick: idle)")
    p.add_argument("--load-procs", type=int, default=2, help="busy processes of the 'load' condition")
    p.add_argument("--model", default=None, help="checkpoint to predict with (default: a random-init Lite0, 128 px)")
    p.add_argument("--busi", default=None, help="the BUSI subset (default ../shared/data/busi)")
    p.add_argument("--train-samples", type=int, default=60, help="BUSI images the train step uses")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--image-size", type=int, default=64, help="training image size")
    p.add_argument("--idle-s", type=float, default=2.0)
    p.add_argument("--after-dock-s", type=float, default=4.0)
    p.add_argument("--tick-ms", type=int, default=10)
    p.add_argument("--hidden", action="store_true", help="do not show the window (no canvas redraws)")
    p.add_argument("--pyspy", action="store_true", help="py-spy dumps of every thread during each gap over 100 ms")
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # run one condition, write JSON here
    p.add_argument("--watchdog", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.watchdog:
        watchdog(int(args.watchdog[0]), args.watchdog[1], args.watchdog[2])
        return
    if args.quick:
        args.train_samples, args.idle_s, args.after_dock_s = 12, 0.3, 0.5
    conditions = (args.conditions or ("idle" if args.quick else "idle,load")).split(",")
    if not args.quick:  # napari alone, each condition: the floor any plugin pays to show a result as a new layer
        conditions += [f"{c}/napari" for c in conditions if not c.endswith("/napari")]
    started = time.time()
    if args.model is None:
        args.model = str(tiny_model(Path(tempfile.mkdtemp(prefix="mtunet-resp-model-")) / "bench-model"))
    if args.child:  # one condition, in this fresh process
        res = run_condition(args, args.child.split("=", 1)[0])
        Path(args.child.split("=", 1)[1]).write_text(json.dumps(res))
        return

    runs: dict[str, Any] = {}
    for cond in conditions:
        print(f"condition {cond} ...", flush=True)
        if args.quick:  # in this process (the smoke test runs the script in-process)
            runs[cond] = run_condition(args, cond)
            continue
        out = Path(tempfile.mkdtemp(prefix="mtunet-resp-")) / f"{cond.replace('/', '-')}.json"
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", f"{cond}={out}", "--model", str(args.model)]
        subprocess.run(cmd, check=True)
        runs[cond] = json.loads(out.read_text())

    for cond, run in runs.items():
        for d in run.get("pyspy", []):
            print(f"\n[{cond}] {d['step']}: heartbeat {d['late_ms']} ms late")
            for t in d["threads"]:
                print("   ", t["thread"], "|", " <- ".join(t["frames"][:4]))
    main_runs = {c: r for c, r in runs.items() if not c.endswith("/napari")}
    names = ["idle", *STEPS]
    headers = ["step"] + [f"{c} {k}" for c in main_runs for k in ("worst_ms", "p99_ms", ">100ms", "cpu_in_worst_ms")]

    def cells(step: dict) -> list:
        return [step["worst_gap_ms"], step["p99_gap_ms"], step["gaps_over_100ms"],
                step.get("worst_process_busy", 0.0) * (step["worst_gap_ms"] + args.tick_ms)]

    rows = [[n] + [v for c in main_runs for v in cells(main_runs[c]["steps"][n])] for n in names]
    for c, r in runs.items():
        if c.endswith("/napari"):
            rows += [[f"napari alone ({c.split('/')[0]}): {n}"] + cells(r["steps"][n]) + [""] * (len(headers) - 5)
                     for n in ("napari_add_labels_first", "napari_add_labels")]
    platform = os.environ.get("QT_QPA_PLATFORM", "default")
    print(f"\nGUI-thread gaps (heartbeat every {args.tick_ms} ms; gap = time between ticks - interval); platform "
          f"{platform}; window {'hidden' if args.hidden else 'shown'}; "
          + "; ".join(f"{c}: load average {r['loadavg_at_end']:.1f} at the end" for c, r in runs.items()))
    C.print_table(headers, rows)
    targets = [C.target_check(f"{n}: worst GUI-thread gap, {c} (ms)", runs[c]["steps"][n]["worst_gap_ms"], TARGET_MS)
               for c in main_runs for n in STEPS]
    C.print_targets(targets)
    errors = [e for r in runs.values() for e in r["errors"]]
    if errors:
        print("widget errors:", *errors, sep="\n  ")
    first = runs[conditions[0]]["steps"]
    C.write_result(
        NAME, args,
        {"config": {"tick_ms": args.tick_ms, "image": IMAGE, "train_samples": args.train_samples,
                    "epochs": args.epochs, "image_size": args.image_size, "load_procs": args.load_procs,
                    "conditions": conditions, "show": not args.hidden, "qt_platform": platform},
         # the first condition's steps under "results" (as before); every condition under "conditions"
         "results": first, "conditions": runs, "errors": errors, "targets": targets},
        started,
    )


if __name__ == "__main__":
    main()
