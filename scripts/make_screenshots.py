"""Take the user guide's screenshots: a real napari window (1600 x 1000, shown) driven through the widgets.

    python scripts/make_screenshots.py                       # re-runs itself under xvfb-run without a display
    python scripts/make_screenshots.py --model runs/busi/best.safetensors

Uses the real BUSI subset in ../shared/data/busi (set MTUNET_BUSI to point elsewhere); nothing from it
is copied into the repository, only the PNG screenshots in docs/screenshots/.

- the Train widget trains twice on a small stratified subset (ImageNet-pretrained
  timm-tf_efficientnet_lite0, whose weights ship with napari-mtunet, so this works offline), the
  second run beside the first one's faded curves;
- Predict and Annotate use ``--model`` when given (a model trained longer, e.g. with ``mtunet train``),
  else the model the Train widget just trained.  Either way it is a quick demo model, not a validated one.
- Segment object needs an interactive model (``--segment-model``, trained with ``mtunet train ...
  --interactive``); without one its screenshot is skipped.  ``--only segment_object`` takes it alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"
PLUGIN = "napari-mtunet"
WINDOW = (1600, 1000)


def find_busi() -> Path:
    for c in [os.environ.get("MTUNET_BUSI"), REPO.parent / "shared" / "data" / "busi", "/work/shared/data/busi"]:
        if c and (Path(c) / "Dataset_BUSI_with_GT").is_dir():
            return Path(c) / "Dataset_BUSI_with_GT"
    sys.exit("BUSI subset not found: set MTUNET_BUSI to the folder holding Dataset_BUSI_with_GT")


def ensure_display() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("MTUNET_SCREENSHOT_CHILD"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no display and no xvfb-run: install xvfb or run on a desktop")
    env = dict(os.environ, MTUNET_SCREENSHOT_CHILD="1")
    cmd = [xvfb, "-a", "-s", "-screen 0 1920x1200x24", sys.executable, __file__, *sys.argv[1:]]
    sys.exit(subprocess.call(cmd, env=env))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.environ.get("MTUNET_SHOT_MODEL"),
                   help="model for the Predict and Annotate screenshots (default: the one trained here)")
    p.add_argument("--samples", type=int, default=int(os.environ.get("MTUNET_SHOT_SAMPLES", "120")),
                   help="training subset (stratified)")
    p.add_argument("--epochs", type=int, default=int(os.environ.get("MTUNET_SHOT_EPOCHS", "4")),
                   help="epochs of the second training run (the first one runs half as many)")
    p.add_argument("--image", default=os.environ.get("MTUNET_SHOT_IMAGE", "malignant (184).png"),
                   help="the BUSI image of the Predict screenshots")
    p.add_argument("--stack", nargs=4, default=["benign (67).png", "malignant (161).png", "normal (28).png",
                                                "benign (72).png"], help="the four BUSI images of the stack")
    p.add_argument("--segment-model", default=os.environ.get("MTUNET_SHOT_SEGMENT_MODEL"),
                   help="an interactive model (mtunet train ... --interactive) for the Segment object screenshot")
    p.add_argument("--segment-image", default="benign (98)", help="the BUSI image of the Segment object screenshot "
                   "(two lesions: one is committed, the other is being segmented from a box and a click)")
    p.add_argument("--only", nargs="*", default=None, help="take only these screenshots (names without .png)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, training set)")
    return p.parse_args()


def main() -> None:
    ensure_display()
    args = parse_args()
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_mtunet import layer_meta
    from napari_mtunet.data import read_image
    from napari_mtunet.widgets import _job
    from napari_mtunet.widgets._session import state_for
    from napari_mtunet.widgets._warmup import warm_up_done

    messages: list[str] = []
    _job.notify_info = lambda m: messages.append(f"info: {m}")  # no toast over the screenshots
    _job.notify_error = lambda m: messages.append(f"ERROR: {m}")

    busi = find_busi()
    work = Path(tempfile.mkdtemp(prefix="mtunet-shots-"))
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-mtunet", show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(*WINDOW)

    def pump(n: int = 20) -> None:
        for _ in range(n):
            app.processEvents()
            time.sleep(0.01)

    def wait(cond, timeout=3600.0, what="work"):
        t0 = time.time()
        while not cond():
            app.processEvents()
            time.sleep(0.02)
            if time.time() - t0 > timeout:
                raise TimeoutError(f"{what} did not finish in {timeout} s")
        pump()
        errors = [m for m in messages if m.startswith("ERROR")]
        if errors:
            raise SystemExit(f"{what}: {errors[-1]}")

    def shot(name):
        if args.only is not None and name not in args.only:
            return
        pump(30)
        path = OUT / f"{name}.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        print("wrote", path.relative_to(REPO), flush=True)

    def dock(name):
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        pump()
        return widget

    def pick(combo, text):
        i = combo.findText(text)
        combo.setCurrentIndex(i)
        combo.activated.emit(i)

    def prediction_of(image_name):
        for lyr in viewer.layers:
            rec = layer_meta.read(lyr.metadata)
            if rec is not None and rec.kind == "prediction" and rec.source_layer == image_name:
                return lyr
        return None

    if args.only is not None and set(args.only) <= {"segment_object"}:  # warm-up starts with the first dock
        segment_object(viewer, busi, args, dock, wait, shot)
        finish(viewer, work, args, messages)
        return

    # 1. Dataset widget on the real BUSI subset ----------------------------------
    ds = dock("Dataset")
    wait(lambda: warm_up_done() and not state_for(viewer).overlay.prewarming, what="warm-up")
    ds.root.value = str(busi)
    ds.load()
    wait(lambda: not ds.busy, what="dataset check")
    ds.n_preview.setValue(30)
    ds.preview()
    wait(lambda: not ds.busy, what="preview")
    viewer.dims.set_current_step(0, 12)
    viewer.reset_view()
    shot("dataset")
    ds.val_fraction.setValue(0.2)
    ds.test_fraction.setValue(0.1)
    ds.use_for_training()
    viewer.window.remove_dock_widget(ds)  # the preview layers stay on the canvas while training
    if args.only is not None and set(args.only) <= {"dataset"}:
        finish(viewer, work, args, messages)
        return

    # 2. Train widget: two short CPU runs on a stratified subset ------------------
    tw = dock("Train")  # takes the folder and split from the Dataset widget
    tw.out_dir.value = str(work / "runs")
    tw.encoder.setCurrentText("timm-tf_efficientnet_lite0")
    tw.encoder_weights.setCurrentText("imagenet")  # these ImageNet weights ship with napari-mtunet (offline)
    tw.image_size.setValue(128)
    tw.max_samples.setValue(args.samples)
    tw.batch_size.setValue(8)
    tw.patience.setValue(0)
    tw.device.setCurrentText("auto")
    tw.epochs.setValue(max(1, args.epochs // 2))
    tw.lr.setText("3e-4")  # a first try with a smaller learning rate: its curves stay in the plot, faded
    tw.start()
    wait(lambda: not tw.busy, what="first training run")
    tw.epochs.setValue(args.epochs)
    tw.lr.setText("1e-3")
    tw.start()
    wait(lambda: sum(e.kind == "epoch_end" for e in tw.events) >= 2
         and any(e.kind == "batch_end" and e.epoch == 3 and e.batch >= 3 for e in tw.events), what="second run")
    shot("train_running")  # the progress, the time left and the plot stay below the (scrolling) settings
    wait(lambda: not tw.busy, what="training")
    shot("train_done")
    trained = tw.best_checkpoint
    if trained is None:
        raise SystemExit(f"training produced no checkpoint: {tw.last_error}")
    viewer.window.remove_dock_widget(tw)
    model = args.model or trained
    if args.only is not None and not {"predict_busi", "predict_gradcam", "predict_stack",
                                      "annotate_finetune"} & set(args.only):
        finish(viewer, work, args, messages)
        return

    # 3. Predict on a real BUSI image ---------------------------------------------
    viewer.layers.clear()
    pw = dock("Predict")
    pw.checkpoint.value = str(model)
    img_path = busi / args.image.split(" (")[0] / args.image
    image = read_image(img_path)
    viewer.add_image(image, name=img_path.stem, rgb=image.ndim == 3)
    pw.image_layer.setCurrentText(img_path.stem)
    pw.gradcam.setChecked(True)
    pw.predict()
    wait(lambda: not pw.busy, what="prediction")
    labels = prediction_of(img_path.stem)
    cam = next(lyr for lyr in viewer.layers if (r := layer_meta.read(lyr.metadata)) and r.kind == "gradcam")
    cam.visible = False
    viewer.layers.selection.active = labels
    viewer.reset_view()
    shot("predict_busi")
    cam.visible = True
    labels.visible = False
    shot("predict_gradcam")
    labels.visible = True

    # a stack of four BUSI images: per-slice classes
    viewer.layers.clear()
    from skimage.transform import resize

    from napari_mtunet.data import load_dataset, load_sample

    stack_names = list(args.stack)
    by_name = {s.image.name: s for s in load_dataset(busi, duplicates=False).samples}
    slices, truth = [], []
    for n in stack_names:
        arr, mask = load_sample(by_name[n])
        arr = arr[..., 0] if arr.ndim == 3 else arr
        slices.append(resize(arr, (360, 480), preserve_range=True, anti_aliasing=True).astype(np.uint8))
        truth.append(resize(mask.astype(float), (360, 480), order=0) > 0.5)
    viewer.add_image(np.stack(slices), name="BUSI stack")
    pw.image_layer.setCurrentText("BUSI stack")
    pw.gradcam.setChecked(False)
    pw.predict()
    wait(lambda: not pw.busy, what="stack prediction")
    viewer.dims.set_current_step(0, 1)
    viewer.reset_view()
    shot("predict_stack")

    # 4. Annotate & fine-tune, docked below Predict (both scroll) --------------------
    aw = dock("Annotate & fine-tune")
    labels = prediction_of("BUSI stack")
    aw.labels_layer.setCurrentText(labels.name)  # the image and the model follow the labels
    aw.dataset_root.value = str(work / "my_annotations")
    aw.all_slices.setChecked(True)
    viewer.dims.set_current_step(0, 0)
    shot("annotate_confirm")  # the model's class is only a suggestion: the box is empty, Confirm takes it
    # the user corrects the predicted masks with the paint/erase tools (here: the expert masks)
    labels.data = np.stack(truth).astype(np.uint8)
    for i, n in enumerate(stack_names):  # and picks the true class of each slice
        viewer.dims.set_current_step(0, i)
        pick(aw.class_choice, n.split(" (")[0])
    viewer.dims.set_current_step(0, 1)
    aw.add_to_training_set()
    wait(lambda: not aw.busy, what="add to training set")
    aw.device.setCurrentText("auto")
    aw.finetune_or_stop()
    wait(lambda: not aw.busy, what="fine-tuning")
    viewer.layers.selection.active = labels
    labels.mode = "paint"
    viewer.dims.set_current_step(0, 3)  # the slice whose class the user corrected
    pw.update_readout()
    shot("annotate_finetune")
    print("child model:", aw.child_checkpoint, "\nmetrics:", aw.metrics_label.plain_text(), flush=True)
    viewer.window.remove_dock_widget(aw)
    viewer.window.remove_dock_widget(pw)
    segment_object(viewer, busi, args, dock, wait, shot)
    finish(viewer, work, args, messages)


def segment_object(viewer, busi: Path, args: argparse.Namespace, dock, wait, shot) -> None:
    """5. Segment object: one lesion committed from a click, the other being segmented from a box and a click."""
    if not args.segment_model:
        print("segment_object: skipped (no --segment-model: an interactive model is needed)", flush=True)
        return
    import numpy as np

    from napari_mtunet.data import read_image
    from napari_mtunet.data.io import read_mask
    from napari_mtunet.prompts import bbox, next_click

    viewer.layers.clear()
    cls = args.segment_image.split(" (")[0]
    image = read_image(busi / cls / f"{args.segment_image}.png")
    lesions = [read_mask(m) > 0 for m in sorted((busi / cls).glob(f"{args.segment_image}_mask*.png"))]
    lesions = [m for m in lesions if m.any()]
    from napari_mtunet.widgets._session import state_for
    from napari_mtunet.widgets._warmup import warm_up_done

    sw = dock("Segment object")
    wait(lambda: warm_up_done() and not state_for(viewer).overlay.prewarming, what="warm-up")
    sw.checkpoint.value = str(args.segment_model)
    viewer.add_image(image, name=args.segment_image, rgb=image.ndim == 3)
    wait(lambda: bool(sw._layers) and sw._model_meta is not None, what="segment widget")
    viewer.reset_view()
    clicks, box = sw._layers["clicks"], sw._layers["box"]

    def settled() -> bool:
        s = sw._sessions.get(None)
        return sw._in_flight is None and s is not None and s.current() is not None

    first = next_click(lesions[-1], None)  # a click on the first lesion, committed
    clicks.add([first.row, first.col])
    wait(settled, what="first object")
    sw.commit()
    if len(lesions) > 1:  # the second lesion: a box, then one correcting click where the mask is most wrong
        r0, c0, r1, c1 = bbox(lesions[0])
        box.add_rectangles(np.array([[r0, c0], [r1 - 1, c1 - 1]]))
        wait(settled, what="box")
        fix = next_click(lesions[0], np.asarray(sw._layers["object"].data) > 0)
        if fix is not None:
            clicks.feature_defaults = {"prompt": "positive" if fix.positive else "negative"}
            clicks.add([fix.row, fix.col])
            wait(settled, what="correcting click")
    sw.click_mode()
    shot("segment_object")


def finish(viewer, work: Path, args: argparse.Namespace, messages: list[str]) -> None:
    print(*messages, sep="\n")
    viewer.close()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("kept", work)


if __name__ == "__main__":
    main()
