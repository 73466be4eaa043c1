"""The simulated user of interactive training: corrective clicks on the model's own predictions.

A prompted training item (:meth:`napari_mtunet.data.dataset.SampleDataset.prompted_item`) arrives with the
first prompts encoded and a number of ``iterations``.  Before the training step, the model (in eval mode,
without gradients, as RITM does) predicts each prompted item; the user clicks in the larger error region
(:func:`napari_mtunet.prompts.next_click`, drawn towards the region's interior) and the prediction becomes
the previous-mask channel.  After an item's last iteration, its input (clicks, previous mask, box) is what
the training step learns from.  Automatic items (no prompt) pass unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import IMAGE_CHANNELS, InteractiveConfig
from ..prompts import disks, next_click

POSITIVE, NEGATIVE, PREVIOUS = IMAGE_CHANNELS, IMAGE_CHANNELS + 1, IMAGE_CHANNELS + 2


def model_input(batch: dict[str, Any], prompts: bool) -> torch.Tensor:
    """The network input of a batch: the images, followed by their guidance channels for an interactive model
    (items without guidance get zeros inside the model)."""
    x = batch["image"]
    if prompts and "guidance" in batch:
        x = torch.cat([x, batch["guidance"].to(x.dtype)], dim=1)
    return x


class ClickSimulator:
    """Adds the corrective clicks of each prompted item of a batch (see the module docstring)."""

    def __init__(self, config: InteractiveConfig):
        self.config = config

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        iterations = batch.get("iterations")
        if iterations is None:
            return x
        iters = torch.as_tensor(iterations).reshape(-1).cpu().numpy()
        if iters.max(initial=0) <= 0:
            return x
        truth = (batch["mask"][:, 0] > 0.5).cpu().numpy()
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        size = tuple(x.shape[-2:])
        radius = float(self.config.click_radius)
        was_training = model.training
        model.eval()
        try:
            for it in range(int(iters.max())):
                sel = np.flatnonzero(iters > it)
                if sel.size == 0:
                    break
                index = torch.as_tensor(sel, device=x.device)
                probs = model(x.index_select(0, index)).mask_probability()
                preds = (probs > 0.5).cpu().numpy()
                for j, pred in zip(sel, preds):
                    click = next_click(truth[j], pred, rng)
                    x[j, PREVIOUS] = torch.from_numpy(pred.astype(np.float32)).to(x)
                    if click is None:
                        continue
                    disk = torch.from_numpy(disks([(click.row, click.col)], size, radius)).to(x)
                    channel = POSITIVE if click.positive else NEGATIVE
                    x[j, channel] = torch.maximum(x[j, channel], disk)
        finally:
            model.train(was_training)
        return x
