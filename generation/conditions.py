"""ControlNet conditions computed from the product image, and the reference image for the IP-Adapter."""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from PIL import Image

from indexer.weights import missing_labels, repo_source

from .generator import GeneratorError, GeneratorWeightsMissing

log = logging.getLogger(__name__)

# Canny hysteresis thresholds used by the ControlNet canny models' own training data.
CANNY_LOW, CANNY_HIGH = 100, 200


def canny_condition(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """White edges on black at ``size`` (width, height), as the canny ControlNets expect."""
    import cv2

    grey = np.asarray(image.convert("RGB").resize(size, Image.Resampling.LANCZOS).convert("L"))
    edges = cv2.Canny(grey, CANNY_LOW, CANNY_HIGH)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def square_reference(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Pad to a square so the IP-Adapter's centre crop keeps the whole product."""
    rgb = image.convert("RGB")
    side = max(rgb.size)
    if rgb.width == rgb.height:
        return rgb
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    return canvas


class DepthEstimator:
    """A transformers depth-estimation model, loaded on first use (``LOOKALIKE_DEPTH_MODEL``)."""

    def __init__(self, model: str | None, device: Any):
        self.model = model
        self.device = device
        self._pipe = None
        self._lock = threading.Lock()

    def condition(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        depth = self._estimator()(image.convert("RGB"))["depth"]
        grey = np.asarray(depth.convert("L").resize(size, Image.Resampling.BICUBIC))
        return Image.fromarray(np.stack([grey] * 3, axis=-1))

    def _estimator(self):
        with self._lock:
            if self._pipe is None:
                if not self.model:
                    raise GeneratorError(
                        "--control depth needs a depth-estimation model, and none is configured: set "
                        "LOOKALIKE_DEPTH_MODEL to a transformers depth model folder or hub id (e.g. "
                        "depth-anything/Depth-Anything-V2-Small-hf or Intel/dpt-hybrid-midas), or use "
                        "--control canny"
                    )
                from transformers import pipeline

                try:
                    self._pipe = pipeline("depth-estimation", model=self.model, device=self.device)
                except Exception as exc:  # transformers raises OSError, ValueError, ... for missing weights
                    if missing_labels([repo_source(self.model)]):
                        spec = f"hf:{self.model}"
                        raise GeneratorWeightsMissing(spec, [self.model], setting="LOOKALIKE_DEPTH_MODEL") from exc
                    raise GeneratorError(
                        f"cannot load the depth model {self.model!r} (LOOKALIKE_DEPTH_MODEL): "
                        f"{type(exc).__name__}: {str(exc)[:300]}. Point it at a local folder with the model's "
                        "config and weights (e.g. made with `hf download REPO --local-dir DIR`)."
                    ) from exc
            return self._pipe
