"""``hf:REPO_OR_PATH``: CLIP, SigLIP and SigLIP 2 checkpoints through transformers' AutoModel and AutoProcessor.

Each family tokenizes text the way it was trained (``TextRule``):
- CLIP pads to the batch's longest text and truncates at its context (77 tokens); its causal mask and
  end-of-text pooling keep the padding out of the vector.
- SigLIP and SigLIP 2 were trained on lowercased text padded to a fixed length (64 tokens) with no attention
  mask, pooling the last position: texts are padded to that length and the mask is not passed, or the vectors
  would differ from the ones the model was trained to match.

SigLIP 2 NaFlex checkpoints (``Siglip2Model``) take a variable patch grid per image. The index pipeline stacks
one tensor per image, so images are padded to a square first: every image then has the same grid, and one
``pixel_attention_mask`` and ``spatial_shapes`` serve the whole batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .encoders import Device, EncoderError, PixelEncoder, dir_digest, normalise
from .specs import load_error
from .weights import is_local_location

log = logging.getLogger(__name__)

FAMILIES = ("clip", "siglip", "siglip2")
HF_HINT = "Point the spec at a local folder saved with save_pretrained, or at a hub id of a CLIP or SigLIP model."


@dataclass(frozen=True)
class TextRule:
    """How a model family's texts are tokenized (see the module docstring)."""

    padding: str  # "longest" or "max_length"
    max_length: int
    attention_mask: bool
    lowercase: bool

    @classmethod
    def for_model(cls, model_type: str, context: int) -> TextRule:
        if model_type == "clip":
            return cls("longest", context, attention_mask=True, lowercase=False)
        return cls("max_length", context, attention_mask=False, lowercase=True)


class HFEncoder(PixelEncoder):
    """Image and text towers of a transformers CLIP-style model."""

    modalities = frozenset({"image", "text"})

    def __init__(self, spec: str, location: str, device: Device):
        from transformers import AutoModel, AutoProcessor

        self.spec = spec
        self.device = device
        local = is_local_location(location)
        path = str(Path(location).expanduser()) if local else location
        try:
            processor = AutoProcessor.from_pretrained(path)
            model = AutoModel.from_pretrained(path, dtype=device.dtype)
        except (OSError, ValueError, KeyError, ImportError) as exc:  # missing files, bad configs, absent extras
            raise load_error(spec, exc, HF_HINT) from exc
        model_type = model.config.model_type
        if model_type not in FAMILIES or not hasattr(model, "get_image_features"):
            raise EncoderError(
                f"{spec} is a {model_type} model; hf: encoders take CLIP, SigLIP and SigLIP 2 checkpoints "
                "(for other open_clip models use openclip:hf-hub:ORG/NAME)"
            )
        self.model = model.to(device.device).eval()
        self._image_processor = processor.image_processor
        self._tokenizer = processor.tokenizer
        # Fast tokenizers keep their padding and truncation settings as state: one call at a time.
        self._tokenizer_lock = threading.Lock()
        text_config = model.config.text_config
        context = min(int(getattr(self._tokenizer, "model_max_length", 10**9)), text_config.max_position_embeddings)
        self.text_rule = TextRule.for_model(model_type, context)
        self._naflex = model_type == "siglip2"
        self._grid: dict[str, torch.Tensor] = self._naflex_grid() if self._naflex else {}
        self.image_size = self._input_side(model.config.vision_config)
        digest = dir_digest(Path(path)) if local else (getattr(model.config, "_commit_hash", None) or "")[:12]
        self.model_id = f"hf:{Path(path).name if local else location}" + (f"@{digest}" if digest else "")
        self.dim = int(self.encode_texts(["a"]).shape[1])
        scale = getattr(model, "logit_scale", None)
        # Zero-shot tagging turns cosines into probabilities with the model's own temperature.
        self.logit_scale = float(scale.detach().float().exp()) if isinstance(scale, torch.Tensor) else 100.0
        log.info("loaded %s (%s, %d-d) on %s", spec, model_type, self.dim, device)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self._naflex:
            image = _square(image)
        return self._image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = pixels.to(self.device.device, dtype=self.device.dtype, non_blocking=True)
        grid = {k: v.to(self.device.device).expand(len(pixels), *v.shape[1:]) for k, v in self._grid.items()}
        return normalise(_features(self.model.get_image_features(pixel_values=pixels, **grid)))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        rule = self.text_rule
        texts = [t.lower() for t in texts] if rule.lowercase else list(texts)
        with self._tokenizer_lock:
            batch = self._tokenizer(
                texts, padding=rule.padding, max_length=rule.max_length, truncation=True, return_tensors="pt"
            )
        inputs = {"input_ids": batch["input_ids"].to(self.device.device)}
        if rule.attention_mask and "attention_mask" in batch:
            inputs["attention_mask"] = batch["attention_mask"].to(self.device.device)
        return normalise(_features(self.model.get_text_features(**inputs)))

    def _naflex_grid(self) -> dict[str, torch.Tensor]:
        """The patch mask and grid shape every (square) image gets, read off one probe image."""
        probe = self._image_processor(images=Image.new("RGB", (64, 64), "white"), return_tensors="pt")
        return {"pixel_attention_mask": probe["pixel_attention_mask"], "spatial_shapes": probe["spatial_shapes"]}

    def _input_side(self, vision_config: Any) -> int:
        if self._naflex:
            side = int(self._grid["spatial_shapes"][0, 0])
            return side * int(vision_config.patch_size)
        size = vision_config.image_size
        return int(size[0] if isinstance(size, tuple | list) else size)


def _features(output: Any) -> torch.Tensor:
    # transformers 5 returns the projected features as the output's pooler_output; 4.x returns the tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _square(image: Image.Image) -> Image.Image:
    side = max(image.size)
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas
