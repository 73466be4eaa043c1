"""Simulated scanner shifts: a wide, seeded family of ways another ultrasound scanner (or setting) changes images.

A shift is a :class:`Shift`: an ordered list of components, each with its parameters drawn at random by
:func:`draw_shift` (so a study never tunes itself to a few hand-picked shifts).  The components:

- ``gain``: intensity times g (0.6-1.5), clipped;
- ``gamma``: x ** gamma (0.55-1.8);
- ``contrast``: (x - mean) * c + mean (0.55-1.6);
- ``compression``: log dynamic-range compression with strength k (1-30), x -> log(1 + k x) / log(1 + k),
  or its inverse (expansion);
- ``offset``: + b (-0.12 - 0.12), e.g. a raised noise floor;
- ``blur``: Gaussian blur, sigma 0.6-2.5 px;
- ``resolution``: down-sampled by 1.5-3.5 and back (a coarser transducer);
- ``speckle``: multiplicative correlated Rayleigh speckle of strength 0.15-0.6;
- ``depth``: depth attenuation exp(-a * depth), a 0.4-2.0, with a gain to keep the top bright;
- ``tgc``: a time-gain-compensation curve that brightens depth (the opposite of ``depth``), 0.3-1.2.

Masks are never shifted (a scanner changes intensities and resolution, not anatomy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Component name -> parameter range (low, high) of its one parameter.
COMPONENTS: dict[str, tuple[float, float]] = {
    "gain": (0.6, 1.5),
    "gamma": (0.55, 1.8),
    "contrast": (0.55, 1.6),
    "compression": (-30.0, 30.0),  # |k| in [1, 30]; negative = expansion
    "offset": (-0.12, 0.12),
    "blur": (0.6, 2.5),
    "resolution": (1.5, 3.5),
    "speckle": (0.15, 0.6),
    "depth": (0.4, 2.0),
    "tgc": (0.3, 1.2),
}
#: The order in which drawn components are applied (intensity mapping, then optics and noise, then depth).
ORDER = ("resolution", "blur", "speckle", "gain", "gamma", "contrast", "compression", "offset", "depth", "tgc")


@dataclass
class Shift:
    """An ordered list of ``(component, parameter)``; ``apply`` is deterministic given a seed (speckle)."""

    components: list[tuple[str, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "+".join(f"{c}{p:.2g}" for c, p in self.components) or "none"

    def to_dict(self) -> dict[str, Any]:
        return {"components": [[c, float(p)] for c, p in self.components]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shift:
        comps = [(str(c), float(p)) for c, p in d.get("components", [])]
        bad = [c for c, _ in comps if c not in COMPONENTS]
        if bad:
            raise ValueError(f"unknown shift component(s) {bad}; known: {sorted(COMPONENTS)}")
        return cls(comps)

    def apply(self, image: np.ndarray, seed: int = 0) -> np.ndarray:
        """``image`` (any dtype, grey or RGB) as the shifted scanner shows it: uint8 RGB."""
        from .preprocess import to_float_rgb

        x = to_float_rgb(image).astype(np.float64)
        rng = np.random.default_rng(seed)
        for comp, p in self.components:
            x = _APPLY[comp](x, p, rng)
        return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def draw_shift(rng: np.random.Generator, *, min_components: int = 2, max_components: int = 4) -> Shift:
    """A random shift: ``min..max`` distinct components with parameters drawn uniformly from their ranges."""
    n = int(rng.integers(min_components, max_components + 1))
    names = list(rng.choice(list(COMPONENTS), size=n, replace=False))
    comps = []
    for c in sorted(names, key=ORDER.index):
        lo, hi = COMPONENTS[c]
        if c == "compression":
            k = float(rng.uniform(1.0, hi))
            p = k if rng.random() < 0.7 else -k
        else:
            p = float(rng.uniform(lo, hi))
        comps.append((c, p))
    return Shift(comps)


def draw_shifts(n: int, seed: int) -> list[Shift]:
    rng = np.random.default_rng(seed)
    return [draw_shift(rng) for _ in range(n)]


# --------------------------------------------------------------------------- components


def _gain(x, g, rng):
    return np.clip(x * g, 0, 1)


def _gamma(x, g, rng):
    return np.power(np.clip(x, 0, 1), g)


def _contrast(x, c, rng):
    m = x.mean()
    return np.clip((x - m) * c + m, 0, 1)


def _compression(x, k, rng):
    x = np.clip(x, 0, 1)
    if k >= 0:
        return np.log1p(k * x) / np.log1p(k)
    k = -k
    return np.expm1(x * np.log1p(k)) / k


def _offset(x, b, rng):
    return np.clip(x + b, 0, 1)


def _blur(x, s, rng):
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(x, (s, s, 0))


def _resolution(x, f, rng):
    from skimage.transform import resize

    h, w = x.shape[:2]
    low = resize(x, (max(8, round(h / f)), max(8, round(w / f)), x.shape[2]), order=1, anti_aliasing=True)
    return np.clip(resize(low, (h, w, x.shape[2]), order=1), 0, 1)


def _speckle(x, s, rng):
    from scipy import ndimage as ndi

    noise = ndi.gaussian_filter(rng.rayleigh(scale=1.0, size=x.shape[:2]), 0.8)
    noise = noise / noise.mean()
    return np.clip(x * ((1 - s) + s * noise)[..., None], 0, 1)


def _depth(x, a, rng):
    h = x.shape[0]
    att = np.exp(-a * np.linspace(0, 1, h))[:, None, None]
    return np.clip(x * att * (1 + 0.15 * a), 0, 1)


def _tgc(x, a, rng):
    h = x.shape[0]
    return np.clip(x * (1 + a * np.linspace(0, 1, h))[:, None, None], 0, 1)


_APPLY = {"gain": _gain, "gamma": _gamma, "contrast": _contrast, "compression": _compression, "offset": _offset,
          "blur": _blur, "resolution": _resolution, "speckle": _speckle, "depth": _depth, "tgc": _tgc}


def describe(shifts: list[Shift]) -> str:
    return json.dumps([s.to_dict() for s in shifts])
