"""Take the user guide's screenshots: real napari (show=True) driven through the widgets.

    python scripts/make_screenshots.py            # re-runs itself under xvfb-run when there is no display

Uses the real BUSI subset in ../shared/data/busi (set MTUNET_BUSI to point elsewhere);
nothing from it is copied into the repository, only the PNG screenshots in
docs/screenshots/.  Training runs on the CPU for a few minutes on a small subset, so
the model in the screenshots is a quick demo model, not a validated one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"


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


def main() -> None:
    ensure_display()
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_mtunet.data import read_image
    from napari_mtunet.widgets import AnnotateWidget, DatasetWidget, PredictWidget, TrainWidget
    from napari_mtunet.widgets._common import warm_up_done

    busi = find_busi()
    work = Path(tempfile.mkdtemp(prefix="mtunet-shots-"))
    OUT.mkdir(parents=True, exist_ok=True)
    def wait(cond, timeout=1800.0, what="work"):
        t0 = time.time()
        while not cond():
            app.processEvents()
            time.sleep(0.02)
            if time.time() - t0 > timeout:
                raise TimeoutError(f"{what} did not finish in {timeout} s")
        for _ in range(20):
            app.processEvents()
            time.sleep(0.01)

    def shot(viewer, name):
        path = OUT / f"{name}.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        print("wrote", path.relative_to(REPO))

    viewer = napari.Viewer(title="napari-mtunet", show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(1700, 1050)

    # 1. Dataset widget on the real BUSI subset ----------------------------------
    ds = DatasetWidget(viewer)
    dock = viewer.window.add_dock_widget(ds, name="Dataset", area="right")
    wait(warm_up_done, what="warm-up")
    ds.root.value = str(busi)
    ds.load()
    wait(lambda: ds.worker is None, what="dataset check")
    ds.n_preview.setValue(30)
    ds.preview()
    wait(lambda: ds.worker is None, what="preview")
    viewer.dims.set_current_step(0, 12)
    viewer.reset_view()
    shot(viewer, "dataset")
    ds.val_fraction.setValue(0.2)
    ds.test_fraction.setValue(0.1)
    ds.use_for_training()
    viewer.window.remove_dock_widget(dock)
    viewer.layers.clear()

    # 2. Train widget: a short CPU run on a stratified subset ---------------------
    tw = TrainWidget(viewer)
    dock = viewer.window.add_dock_widget(tw, name="Train", area="right")
    tw.out_dir.value = str(work / "runs")
    tw.encoder.setCurrentText("mobilenet_v2")
    tw.encoder_weights.setCurrentText("none")  # offline machine; "imagenet" is better when online
    tw.image_size.setValue(128)
    tw.max_samples.setValue(int(os.environ.get("MTUNET_SHOT_SAMPLES", "150")))
    tw.epochs.setValue(int(os.environ.get("MTUNET_SHOT_EPOCHS", "30")))
    tw.batch_size.setValue(8)
    tw.lr.setText("2e-3")
    tw.patience.setValue(0)
    tw.device.setCurrentText("auto")
    tw.start()
    wait(lambda: len([e for e in tw.events if e.kind == "epoch_end"]) >= 2, what="first epochs")
    shot(viewer, "train_running")
    wait(lambda: tw.worker is None, what="training")
    shot(viewer, "train_done")
    best = tw.best_checkpoint
    if best is None:
        raise SystemExit(f"training produced no checkpoint: {tw.last_error}")
    viewer.window.remove_dock_widget(dock)

    # 3. Predict on real BUSI images --------------------------------------------
    pw = PredictWidget(viewer)
    dock = viewer.window.add_dock_widget(pw, name="Predict", area="right")
    name = os.environ.get("MTUNET_SHOT_IMAGE", "malignant (1).png")
    img_path = busi / name.split(" (")[0] / name
    image = read_image(img_path)
    viewer.add_image(image, name=img_path.stem, rgb=image.ndim == 3)
    pw.set_checkpoint(best)
    pw.image_layer.setCurrentText(img_path.stem)
    pw.gradcam.setChecked(True)
    pw.predict()
    wait(lambda: pw.worker is None, what="prediction")
    viewer.layers[f"{img_path.stem} [Grad-CAM]"].visible = False
    viewer.reset_view()
    shot(viewer, "predict_busi")
    viewer.layers[f"{img_path.stem} [Grad-CAM]"].visible = True
    viewer.layers[f"{img_path.stem} [mtunet]"].visible = False
    shot(viewer, "predict_gradcam")
    viewer.layers[f"{img_path.stem} [mtunet]"].visible = True

    # a stack: per-slice class read-out
    viewer.layers.clear()
    stack_names = ["benign (1).png", "malignant (1).png", "normal (10).png", "benign (100).png"]
    slices = []
    from skimage.transform import resize

    from napari_mtunet.data import load_dataset, load_sample

    by_name = {s.image.name: s for s in load_dataset(busi, duplicates=False).samples}
    truth = []
    for n in stack_names:
        arr, mask = load_sample(by_name[n])
        arr = arr[..., 0] if arr.ndim == 3 else arr
        slices.append((resize(arr, (360, 480), preserve_range=True, anti_aliasing=True)).astype(np.uint8))
        truth.append(resize(mask.astype(float), (360, 480), order=0) > 0.5)
    viewer.add_image(np.stack(slices), name="BUSI stack")
    pw.image_layer.setCurrentText("BUSI stack")
    pw.gradcam.setChecked(False)
    pw.predict()
    wait(lambda: pw.worker is None, what="stack prediction")
    viewer.dims.set_current_step(0, 1)
    viewer.reset_view()
    shot(viewer, "predict_stack")
    viewer.window.remove_dock_widget(dock)

    # 4. Annotate & fine-tune ----------------------------------------------------
    aw = AnnotateWidget(viewer)
    pw2 = PredictWidget(viewer)  # hidden: receives the child checkpoint
    dock = viewer.window.add_dock_widget(aw, name="Annotate & fine-tune", area="right")
    aw.image_layer.setCurrentText("BUSI stack")
    aw.labels_layer.setCurrentText("BUSI stack [mtunet]")
    aw.dataset_root.value = str(work / "my_annotations")
    aw.checkpoint.value = str(best)
    aw.all_slices.setChecked(True)
    # the user corrects the predicted masks with the paint/erase tools (here: the expert masks)
    viewer.layers["BUSI stack [mtunet]"].data = np.stack(truth).astype(np.uint8)
    for i, n in enumerate(stack_names):  # the true classes, as a user would set them
        viewer.dims.set_current_step(0, i)
        aw.class_choice.setCurrentText(n.split(" (")[0])
    viewer.dims.set_current_step(0, 1)
    aw.add_to_training_set()
    wait(lambda: aw.worker is None, what="add to training set")
    aw.epochs.setValue(2)
    aw.device.setCurrentText("auto")
    aw.finetune_or_stop()
    wait(lambda: aw.worker is None, what="fine-tuning")
    viewer.layers.selection.active = viewer.layers["BUSI stack [mtunet]"]
    viewer.layers["BUSI stack [mtunet]"].mode = "paint"
    shot(viewer, "annotate_finetune")
    print("child checkpoint:", aw.child_checkpoint, "metrics:", aw.metrics)
    pw2.close()
    viewer.close()
    if not os.environ.get("MTUNET_SHOT_KEEP"):
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
