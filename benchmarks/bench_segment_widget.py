"""Segment object widget: time from a click on the canvas to the object's mask drawn on screen, in a real napari window.

A shown napari window (1600 x 1000; software OpenGL under Xvfb), the Segment object widget docked, an
interactive model (``--checkpoint``; ``--quick``: a random-init one), real BUSI lesion images (half benign,
half malignant).  On each image a simulated user clicks as in the RITM protocol
(:func:`napari_mtunet.prompts.next_click`: the first click at the point of the lesion farthest from its
boundary, each next one at the farthest point of the larger error region of the mask *on screen*; a negative
one with Shift held).  Each click is a real Qt mouse press and release on napari's canvas (the Points layer
adds the point as it does for a user).  Measured per click:

- ``latency``: from the mouse press to the first frame napari's canvas put on screen (``frameSwapped`` of its
  OpenGL widget) after the widget wrote the mask of that click into its ``[object]`` layer;
- its parts: GUI before the request left (the click, the point, the request), the model in the compute
  process (``Predictor.predict``), the way back (pickling, the pipe, the relay thread, Qt's queue), writing
  the layer, drawing the frame;
- CPU time: napari's process (all its threads, software OpenGL included), its GUI thread, the compute process;
  the load average (the machine is shared: a click waits for a core when others use both).

The user waits ``--think-s`` between clicks (the mask of the previous click is on screen).  Target: median
latency <= 150 ms (issue 19 point 7).  First clicks (two passes of the model) and later clicks (one pass) are
reported apart as well.

    xvfb-run -a -s "-screen 0 1920x1200x24" python benchmarks/bench_segment_widget.py \
        --checkpoint ../runs/pilot2_f0/best.safetensors
    python benchmarks/bench_segment_widget.py --quick
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C
import numpy as np

NAME = "segment_widget"
TARGET_MS = 150.0


def find_busi() -> Path | None:
    here = Path(__file__).resolve().parents[1]
    for c in (os.environ.get("MTUNET_BUSI"), here.parent / "shared" / "data" / "busi", "/work/shared/data/busi"):
        if c and (Path(c) / "Dataset_BUSI_with_GT").is_dir():
            return Path(c) / "Dataset_BUSI_with_GT"
    return None


def load_images(n: int, quick: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, lesion mask): real BUSI lesion images spread over the subset, or one synthetic image."""
    root = None if quick else find_busi()
    if root is None:
        rng = np.random.default_rng(0)
        img = rng.integers(40, 90, (240, 300), dtype=np.uint8)
        truth = np.zeros((240, 300), bool)
        yy, xx = np.mgrid[:240, :300]
        truth[((yy - 120) / 40.0) ** 2 + ((xx - 140) / 60.0) ** 2 <= 1] = True
        img[truth] = 20
        return [("synthetic", img, truth)]
    from napari_mtunet.data.io import read_image, read_mask

    out = []
    per_class = max(1, n // 2)
    for cls in ("benign", "malignant"):
        files = sorted((root / cls).glob(f"{cls} (*).png"), key=lambda p: int(p.stem.split("(")[1][:-1]))
        step = max(1, len(files) // per_class)
        for p in files[::step]:
            masks = sorted(p.parent.glob(p.stem + "_mask*.png"))
            truth = np.any([read_mask(m) > 0 for m in masks], axis=0) if masks else None
            if truth is not None and truth.any():
                out.append((p.stem, read_image(p), truth))
            if len([o for o in out if o[0].startswith(cls)]) >= per_class:
                break
    return out


def tiny_model(folder: Path) -> Path:
    """A random-init interactive model (its quality does not matter for the latency of the widget's path)."""
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, prompts=True, class_names=["benign", "malignant", "normal"]),
                        Preprocessing(image_size=64))
    folder.mkdir(parents=True, exist_ok=True)
    return Path(save_checkpoint(folder / "best.safetensors", model))


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run(args: Any) -> dict[str, Any]:
    import napari
    from qtpy.QtCore import QEventLoop, QPoint, Qt, QTimer
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    from napari_mtunet import compute
    from napari_mtunet.prompts import next_click
    from napari_mtunet.widgets import SegmentWidget, _job
    from napari_mtunet.widgets._warmup import warm_up_done

    errors: list[str] = []
    _job.notify_error = errors.append
    _job.notify_info = lambda *_: None
    images = load_images(args.images, args.quick)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment object", area="right")
    canvas = viewer.window._qt_viewer.canvas
    native = canvas._scene_canvas.native
    swaps: list[float] = []
    native.frameSwapped.connect(lambda: swaps.append(time.perf_counter()))
    shown: list[tuple[int, float]] = []
    widget.mask_shown.connect(lambda g: shown.append((g, time.perf_counter())))

    # waiting never polls: the GUI thread sleeps in Qt's event loop until an event comes (a busy wait would take a
    # core from the compute process); a 20 ms timer wakes it to check the condition
    wake = QTimer()
    wake.start(20)
    wait_flags = QEventLoop.ProcessEventsFlag.AllEvents | QEventLoop.ProcessEventsFlag.WaitForMoreEvents

    def until(cond, timeout: float) -> bool:
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            if cond():
                return True
            app.processEvents(wait_flags)
        return bool(cond())

    def spin(seconds: float) -> None:
        until(lambda: False, seconds)

    t_warm = time.perf_counter()
    until(warm_up_done, 600)
    widget.checkpoint.value = str(args.checkpoint)
    until(lambda: widget._model_meta is not None or errors, 600)
    warm_s = time.perf_counter() - t_warm
    child = compute.client().proc.pid

    def to_canvas(row: float, col: float) -> QPoint:
        x, y = canvas.view.scene.transform.map([col + 0.0, row + 0.0])[:2]
        return QPoint(int(round(x)), int(round(y)))

    clicks: list[dict[str, Any]] = []
    for name, image, truth in images:
        layer = viewer.add_image(image, name=name, rgb=image.ndim == 3)
        widget.image_layer.set_layer(layer)
        until(lambda: widget._target is layer and bool(widget._layers), 30)
        viewer.reset_view()
        spin(args.think_s + 0.5)
        on_screen = None
        for k in range(args.clicks):
            click = next_click(truth, on_screen)
            if click is None:
                break
            pos = to_canvas(click.row, click.col)
            back = canvas._map_canvas2world((pos.x(), pos.y()), canvas.view)
            mods = Qt.KeyboardModifier.NoModifier if click.positive else Qt.KeyboardModifier.ShiftModifier
            session_before = widget.stats["shown"]
            load = os.getloadavg()[0]
            cpu0, gui0, child0 = time.process_time(), time.thread_time(), proc_cpu_s(child)
            n_shown = len(shown)
            t0 = time.perf_counter()
            QTest.mousePress(native, Qt.MouseButton.LeftButton, mods, pos)
            QTest.mouseRelease(native, Qt.MouseButton.LeftButton, mods, pos)
            t_released = time.perf_counter()
            session = widget._sessions.get(None)
            want = session.generation if session is not None else -1
            ok = until(lambda: any(g == want for g, _ in shown[n_shown:]), args.timeout_s)
            t_shown = next((t for g, t in shown[n_shown:] if g == want), None)
            ok = ok and until(lambda: bool(swaps) and swaps[-1] > t_shown, 5)
            t_drawn = next((t for t in swaps if t_shown is not None and t > t_shown), None)
            cpu1, gui1, child1 = time.process_time(), time.thread_time(), proc_cpu_s(child)
            lt = dict(widget.last_timing)
            rec = {
                "image": name, "click": k + 1, "positive": click.positive, "row": click.row, "col": click.col,
                "mapped_back": [round(float(v), 2) for v in back[-2:]], "completed": bool(ok and t_drawn),
                "passes": lt.get("passes"), "load_average": round(load, 2),
                "napari_cpu_ms": round((cpu1 - cpu0) * 1000, 1), "gui_thread_cpu_ms": round((gui1 - gui0) * 1000, 1),
                "compute_cpu_ms": round((child1 - child0) * 1000, 1), "shown_count_before": session_before,
            }
            if ok and t_drawn is not None:
                rec.update({
                    "latency_ms": round((t_drawn - t0) * 1000, 1),
                    "gui_to_request_ms": round((lt["submitted"] - t0) * 1000, 1),
                    "model_ms": round(lt["compute_s"] * 1000, 1),
                    "model_cpu_ms": round(lt["compute_cpu_s"] * 1000, 1),
                    "way_back_ms": round((lt["returned"] - lt["submitted"] - lt["compute_s"]) * 1000, 1),
                    "write_layer_ms": round((lt["shown"] - lt["returned"]) * 1000, 1),
                    "draw_ms": round((t_drawn - lt["shown"]) * 1000, 1),
                    "press_release_ms": round((t_released - t0) * 1000, 1),
                })
                print(f"  {name} click {k + 1} ({'+' if click.positive else '-'}, {lt.get('passes')} pass): "
                      f"{rec['latency_ms']:.0f} ms = gui {rec['gui_to_request_ms']:.0f} + model {rec['model_ms']:.0f}"
                      f" (cpu {rec['model_cpu_ms']:.0f}) + back {rec['way_back_ms']:.0f} + layer {rec['write_layer_ms']:.0f} + draw "
                      f"{rec['draw_ms']:.0f}; cpu napari {rec['napari_cpu_ms']:.0f} (gui {rec['gui_thread_cpu_ms']:.0f})"
                      f", compute {rec['compute_cpu_ms']:.0f}; load {load:.1f}", flush=True)
            else:
                print(f"  {name} click {k + 1}: not shown within {args.timeout_s} s", flush=True)
            clicks.append(rec)
            obj = widget._layers.get("object")
            on_screen = (np.asarray(obj.data) > 0) if obj is not None else None
            spin(args.think_s)
        widget.clear()
        spin(0.2)
        viewer.layers.remove(layer)
        spin(0.2)
    viewer.close()
    compute.shutdown()
    return {"clicks": clicks, "errors": errors, "warm_up_s": round(warm_s, 1), "n_images": len(images)}


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values, float)
    return {"n": int(a.size), "median": round(float(np.median(a)), 1), "p90": round(float(np.percentile(a, 90)), 1),
            "min": round(float(a.min()), 1), "max": round(float(a.max()), 1)}


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="an interactive checkpoint (required unless --quick)")
    p.add_argument("--images", type=int, default=8, help="BUSI lesion images (half benign, half malignant)")
    p.add_argument("--clicks", type=int, default=4, help="clicks per image")
    p.add_argument("--think-s", type=float, default=0.4, help="the user's pause between clicks")
    p.add_argument("--timeout-s", type=float, default=60.0)
    args = p.parse_args()
    if args.quick:
        args.images, args.clicks, args.think_s = 1, 3, 0.1
        if args.checkpoint is None:
            args.checkpoint = str(tiny_model(Path(tempfile.mkdtemp(prefix="mtunet-seg-bench-"))))
    if args.checkpoint is None:
        p.error("--checkpoint: an interactive model is required (e.g. ../runs/<run>/best.safetensors)")
    started = time.time()
    load_start = [round(v, 2) for v in os.getloadavg()]
    res = run(args)
    done = [c for c in res["clicks"] if c["completed"]]
    keys = ("latency_ms", "gui_to_request_ms", "model_ms", "way_back_ms", "write_layer_ms", "draw_ms",
            "model_cpu_ms", "napari_cpu_ms", "gui_thread_cpu_ms", "compute_cpu_ms", "load_average")
    groups = {"all clicks": done, "first clicks (2 passes)": [c for c in done if c["passes"] == 2],
              "later clicks (1 pass)": [c for c in done if c["passes"] == 1]}
    stats = {g: {k: summary([c[k] for c in cs]) for k in keys} for g, cs in groups.items()}
    headers = ["clicks", "n", *[f"{k} med/p90" for k in keys[:6]], "model cpu", "napari cpu", "compute cpu", "load"]
    rows = []
    for g, st in stats.items():
        if not st["latency_ms"]["n"]:
            continue
        rows.append([g, st["latency_ms"]["n"], *[f"{st[k]['median']:.0f}/{st[k]['p90']:.0f}" for k in keys[:6]],
                     f"{st['model_cpu_ms']['median']:.0f}", f"{st['napari_cpu_ms']['median']:.0f}",
                     f"{st['compute_cpu_ms']['median']:.0f}",
                     f"{st['load_average']['median']:.1f}"])
    print(f"\nclick -> mask on screen, {len(done)} of {len(res['clicks'])} clicks on {res['n_images']} image(s); "
          f"warm-up and model load {res['warm_up_s']} s; load average {load_start} at the start, "
          f"{[round(v, 2) for v in os.getloadavg()]} at the end")
    C.print_table(headers, rows)
    lat = stats["all clicks"]["latency_ms"]
    targets = [C.target_check("click -> mask on screen, median of all clicks (ms)",
                              lat.get("median", float("inf")), TARGET_MS)]
    C.print_targets(targets)
    if res["errors"]:
        print("widget errors:", *res["errors"], sep="\n  ")
    C.write_result(NAME, args, {
        "config": {"checkpoint": str(args.checkpoint), "images": args.images, "clicks": args.clicks,
                   "think_s": args.think_s, "window": [1600, 1000], "qt_platform": os.environ.get("QT_QPA_PLATFORM"),
                   "display": os.environ.get("DISPLAY")},
        "loadavg_start": load_start, "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "summary": stats, "results": res["clicks"], "errors": res["errors"], "warm_up_s": res["warm_up_s"],
        "targets": targets,
    }, started)


if __name__ == "__main__":
    main()
