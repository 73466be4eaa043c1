"""Bootstrap CIs: the vectorised statistics vs the per-resample scikit-learn loop (same resamples, one run).

    python benchmarks/bench_bootstrap.py [--n 200] [--n-boot 1000]

Prints the seconds of a full classification + segmentation evaluation's CIs both ways and the ratio.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, write_result  # noqa: E402


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--n-boot", type=int, default=1000)
    a = p.parse_args(argv)
    started = time.time()
    if a.quick:
        a.n, a.n_boot = 60, 100
    from napari_mtunet.training import metrics as M

    rng = np.random.default_rng(0)
    k = 3
    y = rng.integers(0, k, a.n)
    logits = rng.normal(size=(a.n, k)) + 1.5 * np.eye(k)[y]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred_m = rng.random((a.n, 64, 64)) > 0.6
    true_m = rng.random((a.n, 64, 64)) > 0.6

    def run(vectorised: bool) -> float:
        orig = M._batched_classification, M.batched_mean, M.batched_pooled_dice
        if not vectorised:  # the loop: every statistic computed resample by resample
            M._batched_classification = lambda *args: (None, None, None, None)
            M.batched_mean = lambda v: None
            M.batched_pooled_dice = lambda *v: None
        try:
            t0 = time.perf_counter()
            c = M.classification_metrics(y, prob, ["a", "b", "c"], n_boot=a.n_boot)
            s = M.segmentation_metrics(pred_m, true_m, n_boot=a.n_boot)
            return time.perf_counter() - t0, c, s
        finally:
            M._batched_classification, M.batched_mean, M.batched_pooled_dice = orig

    t_loop, c1, s1 = run(False)
    t_vec, c2, s2 = run(True)
    same = all(abs(c1[key].ci_low - c2[key].ci_low) < 1e-9 and abs(c1[key].ci_high - c2[key].ci_high) < 1e-9
               for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr"))
    same = same and all(abs(s1[key].ci_low - s2[key].ci_low) < 1e-9 for key in s1)
    print(f"n={a.n}, {a.n_boot} resamples: loop {t_loop:.2f}s, vectorised {t_vec:.3f}s, "
          f"speed-up {t_loop / t_vec:.0f}x; identical CIs: {same}")
    write_result("bootstrap", a, {"n": a.n, "n_boot": a.n_boot, "loop_s": t_loop, "vectorised_s": t_vec,
                                  "speedup": t_loop / t_vec, "identical_cis": same}, started)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
