"""napari responsiveness: the worst event-loop stall while the widgets train, predict and fine-tune.

A ``QTimer`` heartbeat fires every ``--tick-ms`` (10 ms) on the GUI thread;
a stall is the gap between two consecutive ticks minus the interval (the
time the event loop could not run: the user would see a frozen window).
Phases, each in the same napari viewer, shown (``--hidden`` to not show it):

- ``idle``:    nothing running (the machine's own noise floor);
- ``dock``:    the Train, Predict and Annotate widgets are docked and the
  background warm-up (first imports of torch & co.) runs to its end;
- ``train``:   Start in the Train widget on a dataset folder (default: the
  phantom dataset written to a temporary folder; ``--data`` for BUSI), random
  init, CPU, until the worker finishes (epochs, validation, checkpoints);
- ``predict``: Predict on a ``--predict-size`` image layer with the
  checkpoint the training wrote, until the Labels layer has been added;
- ``predict_tiled``: the same on a ``--tiled-size`` image (tiled mode);
- ``predict_gradcam``: Predict with the Grad-CAM layer on a
  ``--gradcam-size`` image (resize mode), until both layers are added;
- ``finetune``: Annotate & fine-tune: the slices of a predicted stack are
  added to a training set, then Fine-tune runs until the child model is ready;
- ``napari_add_labels*``: napari alone -- ``viewer.add_labels`` of the same
  sizes called directly on the GUI thread (the floor any plugin that shows a
  result as a Labels layer pays; the first Labels layer of a session pays
  napari's one-time initialisation).

Target: worst stall <= 100 ms during training, prediction and fine-tuning.
Run under Xvfb (``xvfb-run -a -s "-screen 0 1920x1200x24" python
benchmarks/bench_napari_responsiveness.py``); without a display it sets
``QT_QPA_PLATFORM=offscreen``.  ``--diagnose`` samples every thread's stack
and prints what ran during each stall over 100 ms.

    xvfb-run -a python benchmarks/bench_napari_responsiveness.py --threads 1 --diagnose
    python benchmarks/bench_napari_responsiveness.py --quick
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import _common as C  # noqa: E402

NAME = "napari_responsiveness"


class Heartbeat:
    """A QTimer on the GUI thread; each tick records the time and the GUI thread's own CPU time, so a stall
    can be told apart: the GUI thread busy (work on it: napari drawing a new layer ...) or waiting (for the
    GIL held by another thread, or for a core on a loaded machine)."""

    def __init__(self, interval_ms: int):
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000.0
        self.ticks: list[float] = []
        self.cpu: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        self.ticks.append(time.perf_counter())
        self.cpu.append(time.thread_time())

    def start(self) -> None:
        self.ticks, self.cpu = [], []
        self._tick()
        self.timer.start()

    def stop(self, sampler: StackSampler | None = None) -> dict:
        self.timer.stop()
        self._tick()
        gaps = [b - a for a, b in zip(self.ticks, self.ticks[1:])]
        busy = [(b - a) / g if g > 0 else 0.0 for a, b, g in zip(self.cpu, self.cpu[1:], gaps)]
        stalls = sorted(max(0.0, g - self.interval) for g in gaps)
        worst_i = max(range(len(gaps)), key=gaps.__getitem__) if gaps else 0
        n = len(stalls)
        big = [i for i, g in enumerate(gaps) if g - self.interval > 0.1]
        extra = {}
        if sampler is not None and gaps:
            extra["worst_stall_stacks"] = sampler.explain(self.ticks[worst_i], self.ticks[worst_i + 1])
            # every stall over 100 ms, shortly
            extra["stalls_explained"] = [
                {"at_s": self.ticks[i] - self.ticks[0], "ms": 1000 * (gaps[i] - self.interval),
                 "gui_cpu_share": busy[i], **sampler.explain(self.ticks[i], self.ticks[i + 1])}
                for i in big[:10]
            ]
        return {**extra,
            "duration_s": self.ticks[-1] - self.ticks[0],
            "ticks": n,
            "worst_stall_ms": 1000 * stalls[-1] if n else 0.0,
            "worst_at_s": (self.ticks[worst_i] - self.ticks[0]) if gaps else 0.0,
            "worst_gui_cpu_share": busy[worst_i] if gaps else 0.0,
            "p99_stall_ms": 1000 * stalls[min(n - 1, int(0.99 * n))] if n else 0.0,
            "median_gap_ms": 1000 * C.median(gaps) if gaps else 0.0,
            "stalls_over_100ms": len(big),
            # the GUI thread ran for most of the stall: work on the GUI thread (ours or napari's)
            "stalls_over_100ms_gui_busy": sum(1 for i in big if busy[i] >= 0.5),
            "stalls_over_50ms": sum(1 for s in stalls if s > 0.05),
        }


class StackSampler:
    """``--diagnose``: sample every thread's Python stack every few ms (to explain stalls).

    A stall with (almost) no samples inside it means the sampler could not
    get the GIL either: one C call held it; the last samples before the stall
    show who.
    """

    def __init__(self, period_s: float = 0.003, depth: int = 8):
        import threading

        self.period, self.depth = period_s, depth
        self.samples: list[tuple[float, dict[str, list[str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)
        self._main = threading.main_thread().ident

    def _run(self) -> None:
        import sys
        import threading
        import traceback

        me = threading.get_ident()
        while not self._stop.is_set():
            now = time.perf_counter()
            snap = {}
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                stack = traceback.extract_stack(frame)[-self.depth:]
                label = "main" if tid == self._main else f"thread-{tid % 10000}"
                snap[label] = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack]
            self.samples.append((now, snap))
            time.sleep(self.period)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def explain(self, t0: float, t1: float) -> dict:
        inside = [snap for t, snap in self.samples if t0 <= t <= t1]
        before = [snap for t, snap in self.samples if t < t0][-1:]
        from collections import Counter

        tops: dict[str, Counter] = {}
        for snap in inside:
            for label, stack in snap.items():
                tops.setdefault(label, Counter())[" <- ".join(reversed(stack[-4:]))] += 1
        return {
            "samples_inside": len(inside),
            "expected_samples": int((t1 - t0) / self.period),
            "last_before": before[0] if before else {},
            "most_common_inside": {k: c.most_common(3) for k, c in tops.items()},
        }


def wait_until(app, cond, timeout_s: float) -> bool:
    """Spin the event loop (as napari's own loop would) until ``cond()`` or timeout."""
    t_end = time.perf_counter() + timeout_s
    while not cond():
        if time.perf_counter() > t_end:
            return False
        app.processEvents()
        time.sleep(0.001)
    return True


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset folder for training (default: a temporary phantom dataset)")
    p.add_argument("--phantom-n", type=int, default=48)
    p.add_argument("--image-size", type=int, default=128, help="training image size")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-samples", type=int, default=0, help="0 = all")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--predict-size", type=int, default=1024)
    p.add_argument("--tiled-size", type=int, default=4096, help="0 skips the tiled phase")
    p.add_argument("--gradcam-size", type=int, default=6000, help="0 skips the Grad-CAM phase")
    p.add_argument("--finetune-slices", type=int, default=8, help="0 skips the fine-tuning phase")
    p.add_argument("--idle-s", type=float, default=3.0)
    p.add_argument("--tick-ms", type=int, default=10)
    p.add_argument("--hidden", action="store_true", help="do not show the window (no canvas redraws)")
    p.add_argument("--show", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old commands
    p.add_argument("--diagnose", action="store_true", help="sample thread stacks; report what ran during stalls")
    p.add_argument("--timeout-s", type=float, default=1800)
    args = p.parse_args()
    if args.quick:
        args.phantom_n, args.image_size, args.epochs, args.batch = 24, 64, 1, 8
        args.predict_size, args.idle_s = 128, 0.3
        if args.tiled_size == p.get_default("tiled_size"):
            args.tiled_size = 256
        if args.gradcam_size == p.get_default("gradcam_size"):
            args.gradcam_size = 0
        if args.finetune_slices == p.get_default("finetune_slices"):
            args.finetune_slices = 0
    C.apply_threads(args.threads)
    started = time.time()

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_mtunet import layer_meta
    from napari_mtunet.widgets import AnnotateWidget, PredictWidget, TrainWidget, _job
    from napari_mtunet.widgets._common import state_for, warm_up_done

    errors: list[str] = []
    _job.notify_error = errors.append  # record instead of popping notifications
    _job.notify_info = lambda *_: None

    tmp = tempfile.TemporaryDirectory(prefix="mtunet-resp-")
    data = args.data
    if data is None:
        from napari_mtunet.sample_data import write_phantom_dataset

        data = str(write_phantom_dataset(Path(tmp.name) / "phantom", n=args.phantom_n, size=args.image_size, seed=0))

    viewer = napari.Viewer(show=not args.hidden)
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    hb = Heartbeat(args.tick_ms)
    phases: dict[str, dict] = {}
    sampler = StackSampler() if args.diagnose else None
    if sampler:
        sampler.start()

    def phase(name: str, run, done) -> None:
        hb.start()
        t0 = time.perf_counter()
        run()
        ok = wait_until(app, done, args.timeout_s)
        res = hb.stop(sampler)
        res["completed"] = bool(ok)
        res["wall_s"] = time.perf_counter() - t0
        phases[name] = res
        print(f"  {name}: {res['wall_s']:.1f} s, worst stall {res['worst_stall_ms']:.0f} ms "
              f"(GUI thread busy {res['worst_gui_cpu_share']:.0%} of it; p99 {res['p99_stall_ms']:.0f} ms, "
              f"{res['stalls_over_100ms']} over 100 ms, {res['stalls_over_100ms_gui_busy']} of them with the GUI "
              "thread busy)", flush=True)

    def prediction_of(image_name: str) -> Any:
        for lyr in viewer.layers:
            rec = layer_meta.read(lyr.metadata)
            if rec is not None and rec.kind == "prediction" and rec.source_layer == image_name:
                return lyr
        return None

    # idle baseline
    phase("idle", lambda: None, (lambda t_end=time.perf_counter() + args.idle_s + 0.05: time.perf_counter() > t_end))

    # docking the widgets: the warm-up imports torch & co. in the background
    docked: dict[str, Any] = {}

    def dock() -> None:
        for name, cls in (("train", TrainWidget), ("predict", PredictWidget), ("annotate", AnnotateWidget)):
            docked[name] = cls(viewer)
            viewer.window.add_dock_widget(docked[name], name=name)

    # ... and the class overlay's glyphs are rendered ahead of use (ClassOverlay.prewarm)
    phase("dock", dock, lambda: warm_up_done() and not state_for(viewer).overlay.prewarming)
    tw, pw, aw = docked["train"], docked["predict"], docked["annotate"]

    # training
    tw.data_root.value = data
    tw.out_dir.value = str(Path(tmp.name) / "runs")
    tw.encoder.setCurrentText("mobilenet_v2")
    tw.encoder_weights.setCurrentText("none")
    tw.image_size.setValue(args.image_size)
    tw.epochs.setValue(args.epochs)
    tw.batch_size.setValue(args.batch)
    tw.max_samples.setValue(args.max_samples)
    tw.device.setCurrentText("cpu")
    tw.val_fraction.setValue(args.val_fraction)
    tw.test_fraction.setValue(args.test_fraction)
    phase("train", tw.start, lambda: not tw.running)
    ckpt = tw.best_checkpoint
    if not ckpt:
        raise SystemExit(f"training produced no checkpoint: {tw.last_error or errors}")

    # prediction (resize mode for normal images, tiled for big ones)
    pw.set_checkpoint(ckpt)
    pw.device.setCurrentText("cpu")
    rng = np.random.default_rng(0)
    sizes = [("predict", args.predict_size, "auto", False)]
    if args.tiled_size:
        sizes.append(("predict_tiled", args.tiled_size, "tiled", False))
    if args.gradcam_size:
        sizes.append(("predict_gradcam", args.gradcam_size, "resize", True))

    def napari_floor(name: str, size: int) -> None:
        """napari's own cost: add a Labels layer of that size synchronously on the GUI thread."""
        mask = np.zeros((size, size), np.uint8)
        mask[: size // 2] = 1
        phase(name, lambda: viewer.add_labels(mask, name=f"{name}{size}", opacity=0.5), lambda: True)
        phases[name]["image"] = [size, size]

    # napari alone: the first Labels layer of the session pays one-time initialisation
    napari_floor("napari_add_labels_first", args.predict_size)
    for name, size, mode, cam in sizes:
        layer = viewer.add_image(rng.integers(0, 256, (size, size), dtype=np.uint8), name=f"img{size}")
        pw.image_layer.refresh()
        pw.image_layer.setCurrentText(layer.name)
        pw.mode.setCurrentText(mode)
        pw.gradcam.setChecked(cam)
        phase(name, pw.predict, lambda: not pw.busy)
        phases[name]["image"] = [size, size]
        phases[name]["labels_added"] = prediction_of(layer.name) is not None
        for lyr in list(viewer.layers):  # keep the canvas light for the next phase
            if lyr.name != layer.name and (lyr.name.startswith(layer.name + " [")):
                lyr.visible = False
        layer.visible = False
    pw.gradcam.setChecked(False)

    # fine-tuning: the slices of a predicted stack become a training set, then Fine-tune
    if args.finetune_slices:
        from napari_mtunet.sample_data import make_phantom

        ph = make_phantom(n=args.finetune_slices, size=args.image_size, seed=11)
        viewer.add_image(ph.images, name="stack")
        pw.image_layer.refresh()
        pw.image_layer.setCurrentText("stack")
        pw.mode.setCurrentText("auto")
        pw.predict()
        wait_until(app, lambda: not pw.busy, args.timeout_s)
        labels = prediction_of("stack")
        if labels is None:
            raise SystemExit(f"the stack was not predicted: {errors}")
        labels.data = ph.masks.astype(np.uint8)  # the "corrections"
        aw.labels_layer.refresh()
        aw.labels_layer.setCurrentText(labels.name)
        for i, cls in enumerate(ph.labels):
            viewer.dims.set_current_step(0, i)
            aw.class_choice.setCurrentText(cls)
        aw.dataset_root.value = str(Path(tmp.name) / "corrections")
        aw.all_slices.setChecked(True)
        aw.add_to_training_set()
        wait_until(app, lambda: not aw.busy, args.timeout_s)
        aw.checkpoint.value = str(ckpt)
        aw.device.setCurrentText("cpu")
        phase("finetune", aw.finetune_or_stop, lambda: not aw.busy)
        phases["finetune"]["child"] = bool(aw.child_checkpoint)
        phases["finetune"]["samples"] = len(aw.added)

    for name, size, _, _ in sizes:  # napari alone, steady state, same sizes as the predictions
        napari_floor(f"napari_add_labels_{name}", size)

    viewer.close()
    tmp.cleanup()
    if sampler:
        sampler.stop()
        import json as _json

        for k, v in phases.items():
            for st in v.get("stalls_explained", []):
                print(f"\n[{k}] stall {st['ms']:.0f} ms at {st['at_s']:.2f} s: {st['samples_inside']} samples "
                      f"inside (of ~{st['expected_samples']}); GUI thread busy {st['gui_cpu_share']:.0%}")
                print("  last before:", _json.dumps(st["last_before"], indent=1)[:3000])
                print("  inside:", _json.dumps(st["most_common_inside"], indent=1)[:3000])
    if errors:
        print("widget errors:", *errors, sep="\n  ")

    rows = [[k, v["wall_s"], v["ticks"], v["median_gap_ms"], v["p99_stall_ms"], v["worst_stall_ms"], v["worst_at_s"],
             f"{v['worst_gui_cpu_share']:.0%}", v["stalls_over_100ms"], v["stalls_over_100ms_gui_busy"]]
            for k, v in phases.items()]
    platform = os.environ.get("QT_QPA_PLATFORM", "default")
    print(f"\nheartbeat every {args.tick_ms} ms; stall = gap - interval; platform {platform}; "
          f"window {'hidden' if args.hidden else 'shown'}; load average {os.getloadavg()[0]:.1f}")
    C.print_table(["phase", "wall_s", "ticks", "median_gap_ms", "p99_stall_ms", "worst_stall_ms", "worst_at_s",
                   "worst_gui_busy", ">100ms", ">100ms_gui_busy"], rows)
    targets = [C.target_check(f"{k}: worst event-loop stall (ms)", v["worst_stall_ms"], 100.0)
               for k, v in phases.items() if k not in ("idle", "dock") and not k.startswith("napari_")]
    C.print_targets(targets)
    C.write_result(
        NAME,
        args,
        {"config": {"tick_ms": args.tick_ms, "image_size": args.image_size, "epochs": args.epochs,
                    "batch": args.batch, "data": args.data or f"phantom n={args.phantom_n}",
                    "predict_size": args.predict_size, "tiled_size": args.tiled_size,
                    "gradcam_size": args.gradcam_size, "finetune_slices": args.finetune_slices,
                    "show": not args.hidden, "qt_platform": platform, "napari": napari.__version__,
                    "loadavg_at_end": os.getloadavg()[0]},
         "results": phases, "errors": errors, "targets": targets},
        started,
    )


if __name__ == "__main__":
    main()
