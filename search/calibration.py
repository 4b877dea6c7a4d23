"""Calibrated relevance: raw cosine to a 0-1 score that means the same for every model, channel and query.

Raw cosines are not comparable: with CLIP a good text-to-image match scores about 0.3, a good
image-to-image match about 0.9, and a sentence-transformers text match something else again. So each
(model, channel) pair gets its own mapping, fitted on the index itself.

Method ``robust-z-logistic``:

1. **Background.** Cosines of random (query, item) pairs drawn from the index (``background_scores``):
   for example the CLIP text vector of item *i* against the image vector of item *j != i*. Nearly all
   such pairs are unrelated, so they show what "no relation" scores for this model and channel.
2. **Robust z-score.** ``z = (raw - median) / scale`` with ``scale = IQR / 1.349``. For a normal background
   this equals the standard deviation, but unlike it, it is not inflated by the minority of random pairs
   that do match (two random dresses in a catalog of ten categories).
3. **Logistic.** ``relevance = 1 / (1 + exp(-(z - center) / width))``, with ``center = 3`` and
   ``width = 1`` by default.

So a score at the background median maps to 0.047; a score 3 robust standard deviations above random
pairs (better than about 99.9 % of them, for a normal background) maps to 0.5; 5 maps to 0.88 and 6 to
0.95. The mapping is monotone, so calibration never reorders a channel; it puts all channels on one scale,
which is what lets ``--min-score`` cut meaningfully whatever the query type. ``inverse`` turns a relevance
cut back into a raw cosine per channel, so the cut can run in the store as a score threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

METHOD = "robust-z-logistic"
FORMAT_VERSION = 1
MIN_BACKGROUND = 10
# IQR of a standard normal distribution: turns an IQR into a standard-deviation equivalent.
_NORMAL_IQR = 1.3489795003921634
QUANTILE_LEVELS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def _finite_array(raw: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain non-finite values")
    return arr


@dataclass(frozen=True)
class Calibration:
    """A fitted mapping from raw cosine to relevance for one model and channel. See the module docstring."""

    median: float
    scale: float
    center: float = 3.0
    width: float = 1.0
    n: int = 0
    mean: float = math.nan
    std: float = math.nan
    quantile_levels: tuple[float, ...] = ()
    quantile_values: tuple[float, ...] = ()
    model: str = ""
    channel: str = ""
    method: str = field(default=METHOD)

    def __post_init__(self) -> None:
        for name in ("median", "center"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"calibration field {name!r} must be a finite number, got {getattr(self, name)!r}")
        for name in ("scale", "width"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"calibration field {name!r} must be a finite number > 0, got {value!r}")
        if len(self.quantile_levels) != len(self.quantile_values):
            raise ValueError("calibration fields 'quantile_levels' and 'quantile_values' differ in length")
        if self.method != METHOD:
            raise ValueError(f"calibration field 'method': unknown method {self.method!r}, expected {METHOD!r}")

    def z(self, raw: ArrayLike) -> np.ndarray:
        """Robust standard deviations above the background median."""
        return (_finite_array(raw, "raw scores") - self.median) / self.scale

    def apply(self, raw: ArrayLike) -> np.ndarray:
        """Relevance in [0, 1], same shape as ``raw``; monotone non-decreasing in ``raw``."""
        x = (self.z(raw) - self.center) / self.width
        # The tanh form of the logistic cannot overflow, whatever the score.
        return np.clip(0.5 * (1.0 + np.tanh(0.5 * x)), 0.0, 1.0)

    def inverse(self, relevance: float) -> float:
        """The raw cosine that maps to ``relevance``: -inf for 0 or less, +inf for 1 or more."""
        p = float(relevance)
        if math.isnan(p):
            raise ValueError("relevance must be a number, got nan")
        if p <= 0:
            return -math.inf
        if p >= 1:
            return math.inf
        z = self.center + self.width * math.log(p / (1.0 - p))
        return self.median + self.scale * z

    def percentile(self, raw: ArrayLike) -> np.ndarray:
        """Share of background pairs scoring below ``raw`` (interpolated between the stored quantiles)."""
        if not self.quantile_levels:
            raise ValueError("this calibration stores no background quantiles")
        return np.interp(
            _finite_array(raw, "raw scores"), self.quantile_values, self.quantile_levels, left=0.0, right=1.0
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["quantile_levels"] = list(self.quantile_levels)
        out["quantile_values"] = list(self.quantile_values)
        # JSON has no NaN; absent statistics are written as null.
        for name in ("mean", "std"):
            if math.isnan(out[name]):
                out[name] = None
        out["version"] = FORMAT_VERSION
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        if not isinstance(data, Mapping):
            raise ValueError(f"calibration must be a JSON object, got {type(data).__name__}")
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"calibration field 'version': unsupported {version!r}, expected {FORMAT_VERSION}")
        for name in ("median", "scale"):
            if name not in data:
                raise ValueError(f"calibration is missing the field {name!r}")
        kwargs: dict[str, Any] = {}
        for name in ("median", "scale", "center", "width", "mean", "std"):
            if name in data:
                value = data[name]
                if value is None and name in ("mean", "std"):
                    value = math.nan
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"calibration field {name!r} must be a number, got {value!r}")
                kwargs[name] = float(value)
        for name in ("quantile_levels", "quantile_values"):
            values = data.get(name, [])
            if not isinstance(values, list | tuple) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            ):
                raise ValueError(f"calibration field {name!r} must be a list of numbers")
            kwargs[name] = tuple(float(v) for v in values)
        for name in ("model", "channel", "method"):
            if name in data:
                if not isinstance(data[name], str):
                    raise ValueError(f"calibration field {name!r} must be a string, got {data[name]!r}")
                kwargs[name] = data[name]
        n = data.get("n", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"calibration field 'n' must be a whole number >= 0, got {n!r}")
        return cls(n=n, **kwargs)


def fit_background(
    scores: ArrayLike, *, model: str = "", channel: str = "", center: float = 3.0, width: float = 1.0
) -> Calibration:
    """Fit the mapping on cosines of random (query, item) pairs from the index."""
    arr = _finite_array(scores, "background scores").ravel()
    if arr.size < MIN_BACKGROUND:
        raise ValueError(f"need at least {MIN_BACKGROUND} background scores to calibrate, got {arr.size}")
    values = np.quantile(arr, QUANTILE_LEVELS)
    median = float(np.median(arr))
    q25, q75 = np.quantile(arr, [0.25, 0.75])
    scale = float(q75 - q25) / _NORMAL_IQR
    std = float(np.std(arr, ddof=1))
    if scale <= 0:
        # Over half the pairs tie (a tiny or degenerate index): the plain spread is the best left.
        scale = std
    if not scale > 0:
        raise ValueError(
            f"background scores have no spread (all {median:.6g}): the index is too small or its vectors "
            "are degenerate, so scores cannot be calibrated"
        )
    return Calibration(
        median=median,
        scale=scale,
        center=float(center),
        width=float(width),
        n=int(arr.size),
        mean=float(np.mean(arr)),
        std=std,
        quantile_levels=QUANTILE_LEVELS,
        quantile_values=tuple(float(v) for v in np.maximum.accumulate(values)),
        model=model,
        channel=channel,
    )


def background_scores(
    queries: ArrayLike, items: ArrayLike, n_pairs: int, *, seed: int = 0, exclude_same: bool = True
) -> np.ndarray:
    """Cosines of ``n_pairs`` random (query row, item row) pairs.

    With ``exclude_same`` (the default) the two arrays describe the same catalog row by row, for example
    the CLIP text vectors and the CLIP image vectors of the same items, and a row is never paired with
    itself, since an item against its own image is the one pair that is not random.
    """
    q = _finite_array(queries, "query vectors")
    v = _finite_array(items, "item vectors")
    if q.ndim != 2 or v.ndim != 2 or q.shape[1] != v.shape[1]:
        raise ValueError(f"need two (N, d) arrays of the same width, got {q.shape} and {v.shape}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if exclude_same and q.shape[0] != v.shape[0]:
        raise ValueError(f"exclude_same needs row-aligned arrays, got {q.shape[0]} and {v.shape[0]} rows")
    if exclude_same and q.shape[0] < 2:
        raise ValueError("need at least 2 items to draw pairs of different items")
    if q.shape[0] < 1 or v.shape[0] < 1:
        raise ValueError("need at least one query and one item")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, q.shape[0], size=n_pairs)
    if exclude_same:
        # Draw from the other N-1 rows, then step over i: uniform over j != i.
        j = rng.integers(0, v.shape[0] - 1, size=n_pairs)
        j = j + (j >= i)
    else:
        j = rng.integers(0, v.shape[0], size=n_pairs)
    qn = np.linalg.norm(q, axis=1)
    vn = np.linalg.norm(v, axis=1)
    dots = np.einsum("nd,nd->n", q[i], v[j])
    denom = qn[i] * vn[j]
    return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)


def combine(calibrated: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of per-channel relevances, over the channels given, so the result stays in [0, 1]."""
    total = 0.0
    weighted = 0.0
    for name, value in calibrated.items():
        if name not in weights:
            raise ValueError(f"no weight for channel {name!r}; weights were given for {sorted(weights)}")
        w = float(weights[name])
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight for channel {name!r} must be a finite number >= 0, got {weights[name]!r}")
        r = float(value)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"calibrated relevance for channel {name!r} must be in [0, 1], got {value!r}")
        total += w
        weighted += w * r
    if total == 0:
        raise ValueError(f"no channel with a positive weight among {sorted(calibrated)}")
    return min(1.0, max(0.0, weighted / total))
