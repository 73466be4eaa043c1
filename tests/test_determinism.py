"""What "same seed, same result" guarantees on CPU.

Guaranteed (pinned here): the same seed with the same number of torch CPU
threads (``--threads N`` / ``torch.set_num_threads(N)``) gives bit-identical
weights (the same checkpoint content hash) and metrics, for 1 and for 2
threads.

Not guaranteed: equality *across* thread counts.  oneDNN's convolution and
BatchNorm kernels and the native convolution weight gradient split their
reductions (sums over the batch and the pixels) between threads, so the
partial sums are added in another order: forward outputs are equal, but
gradients and BatchNorm running statistics differ in the last bits after the
first step (measured: up to 3e-7 absolute), and training amplifies that.
The seed, the data order and the augmentation do not depend on the thread
count: the losses of the runs agree to float rounding (pinned below with a
1e-3 relative bound; measured about 1e-6 after three epochs).  Making
thread counts agree would need single-threaded kernels (or fixed-order
reductions), several times slower on multi-core CPUs, so it is documented
instead (docs/reliability.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, sys, tempfile
    import torch
    torch.set_num_threads(int(sys.argv[1]))
    from napari_mtunet.checkpoint import read_metadata
    from napari_mtunet.config import ModelConfig, Preprocessing, TrainConfig
    from napari_mtunet.training import Trainer
    from array_data import blobs_dataset

    runs = []
    for _ in range(2):
        res = Trainer(
            ModelConfig(encoder_weights=None, num_classes=2, encoder_depth=3, decoder_channels=(16, 16, 16)),
            TrainConfig(epochs=3, batch_size=2, amp=False, device="cpu", seed=0, early_stopping_patience=None),
            blobs_dataset(n=4, size=32, seed=0), blobs_dataset(n=2, size=32, seed=1),
            preprocessing=Preprocessing(image_size=32), out_dir=tempfile.mkdtemp(),
        ).fit()
        history = [{k: v for k, v in e.items() if k != "time_s"} for e in res.history]
        runs.append({"hash": read_metadata(res.last_checkpoint)["content_hash"], "history": history,
                     "threads": torch.get_num_threads()})
    print("RESULT " + json.dumps(runs))
    """
)


def _runs(threads: int) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(threads)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_same_seed_and_thread_count_give_identical_weights_and_losses_agree_across_counts():
    one, two = _runs(1), _runs(2)
    assert one[0]["threads"] == 1 and two[0]["threads"] == 2
    for runs in (one, two):  # the guarantee: same seed + same thread count = bit-identical
        assert runs[0]["hash"] == runs[1]["hash"]
        assert runs[0]["history"] == runs[1]["history"]
    # across thread counts only float summation order differs: same data order, same seeds
    for a, b in zip(one[0]["history"], two[0]["history"]):
        assert a.keys() == b.keys()
        for k, va in a.items():
            vb = b[k]
            if isinstance(va, float) and isinstance(vb, float):
                assert abs(va - vb) <= 1e-3 * max(1.0, abs(va)), (k, va, vb)
            else:
                assert va == vb, (k, va, vb)
