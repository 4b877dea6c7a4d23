"""Contrastive (image, title/description) training of a CLIP: from scratch or fine-tuning a pretrained one.

Built from open_clip's own pieces (its model factory, ``ClipLoss``, tokenizer, preprocessing, and
``open_clip_train``'s cosine schedule), with a loop of its own rather than ``open_clip_train.main``:
that entry point re-decodes every image from disk each epoch through DataLoader worker processes and
reports progress only in log lines. Catalog images are small once resized to the model's input, so
here they are decoded and preprocessed once, kept in memory, and every epoch after the first costs
only the model, which on a 2-core CPU is the difference between a demo that trains in minutes and
one that does not.

The output is a plain open_clip checkpoint that loads through the encoder spec
``openclip:ARCH/OUT``. Training state is saved every ``save_every`` steps next to it, and the same
command resumes from there after an interruption.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .catalog import read_catalog
from .encoders import EncoderError, cpu_has_native_bf16, encode_text_trimmed
from .images import ImageError, ImagePolicy, load_image
from .specs import looks_like_path, register_model_configs

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, dict], None]
SCRATCH_ARCH = "lookalike-mini"
CAPTIONS_PER_ITEM = 5  # title, description, both, and two titles with words dropped


class TrainError(RuntimeError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    catalog: Path
    out: Path
    model: str = SCRATCH_ARCH  # an architecture (from scratch) or openclip:ARCH/WEIGHTS (fine-tune)
    epochs: int = 8
    batch_size: int = 256
    lr: float | None = None  # default: 2e-3 from scratch, 1e-5 fine-tuning
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    max_items: int | None = None
    save_every: int = 100
    threads: int | None = None
    # "amp": the image tower in bfloat16 where the CPU runs it natively (AVX512-BF16, AMX), else float32.
    precision: str = "amp"


@dataclass
class TrainReport:
    checkpoint: Path
    spec: str
    items: int
    epochs: int
    steps: int
    seconds: float
    final_loss: float
    resumed_from_step: int = 0


def parse_model(model: str) -> tuple[str, str | None]:
    """``lookalike-mini`` -> (arch, None); ``openclip:ARCH/WEIGHTS`` -> (arch, weights)."""
    if model.startswith("openclip:"):
        arch, _, weights = model.removeprefix("openclip:").partition("/")
        if not arch or not weights:
            raise TrainError(f"model {model!r}: expected openclip:ARCH/PRETRAINED_TAG or openclip:ARCH/PATH")
        return arch, weights
    if ":" in model or "/" in model:
        raise TrainError(f"model {model!r}: give an architecture name (e.g. {SCRATCH_ARCH}) or openclip:ARCH/WEIGHTS")
    return model, None


def train_clip(config: TrainConfig, progress: ProgressFn | None = None) -> TrainReport:
    import open_clip
    from open_clip_train.scheduler import cosine_lr

    started = time.perf_counter()
    if config.precision not in ("amp", "float32"):
        raise TrainError(f"precision {config.precision!r}: expected amp or float32")
    register_model_configs()
    if config.threads:
        torch.set_num_threads(config.threads)
    arch, weights = parse_model(config.model)
    if arch not in open_clip.list_models():
        raise TrainError(f"unknown architecture {arch!r}; lookalike's own is {SCRATCH_ARCH}")
    _seed_everything(config.seed)
    try:
        pretrained = None if weights in (None, "random") else weights
        if pretrained and looks_like_path(pretrained) and not Path(pretrained).expanduser().is_file():
            raise TrainError(f"model {config.model!r}: checkpoint {pretrained} does not exist")
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except TrainError:
        raise
    except Exception as exc:
        raise EncoderError(
            f"cannot load CLIP weights for {config.model!r}: {type(exc).__name__}: {str(exc)[:200]}. "
            "Give a local checkpoint (openclip:ARCH/path/to/weights) or train from scratch (--model lookalike-mini)"
        ) from exc
    tokenizer = open_clip.get_tokenizer(arch)

    pixels, captions = load_training_data(config, preprocess, tokenizer)
    n = len(pixels)
    if n < 2:
        raise TrainError(f"{config.catalog}: need at least 2 readable items to train, found {n}")
    batch = min(config.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total_steps = steps_per_epoch * config.epochs
    lr = config.lr if config.lr is not None else (2e-3 if pretrained is None else 1e-5)
    optimizer = _optimizer(model, lr, config.weight_decay)
    schedule = cosine_lr(optimizer, lr, min(config.warmup_steps, total_steps // 4), total_steps)
    loss_fn = open_clip.ClipLoss()
    image_bf16 = config.precision == "amp" and cpu_has_native_bf16()
    # oneDNN's convolutions run about a fifth faster on NHWC tensors; the checkpoint is the same.
    model = model.to(memory_format=torch.channels_last)

    config.out.parent.mkdir(parents=True, exist_ok=True)
    state_path = config.out.with_name(config.out.name + ".state")
    step = _resume(state_path, config, model, optimizer)
    resumed_from = step
    model.train()
    loss_value = float("nan")
    ema = None
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        idx = order[offset * batch : (offset + 1) * batch]
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        images = augment(pixels[idx].float(), gen).contiguous(memory_format=torch.channels_last)
        which = torch.randint(0, captions.shape[1], (len(idx),), generator=gen)
        texts = captions[idx, which]
        schedule(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=image_bf16):
            image_f = model.encode_image(images, normalize=True).float()
        text_f = torch.nn.functional.normalize(encode_texts_grouped(model, texts), dim=-1)
        loss = loss_fn(image_f, text_f, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # as in CLIP: keep the temperature from exploding
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        loss_value = float(loss.detach())
        ema = loss_value if ema is None else 0.95 * ema + 0.05 * loss_value
        if progress:
            progress(step, total_steps, {"epoch": epoch + 1, "loss": round(ema, 4)})
        if step % config.save_every == 0 or step == total_steps or step % steps_per_epoch == 0:
            _save_state(state_path, config, model, optimizer, step)

    model.eval()
    tmp = config.out.with_name(config.out.name + ".tmp")
    torch.save({"state_dict": model.state_dict()}, tmp)
    os.replace(tmp, config.out)
    spec = f"openclip:{arch}/{config.out}"
    report = TrainReport(
        checkpoint=config.out,
        spec=spec,
        items=n,
        epochs=config.epochs,
        steps=total_steps,
        seconds=time.perf_counter() - started,
        final_loss=ema if ema is not None else loss_value,
        resumed_from_step=resumed_from,
    )
    info = {**asdict(report), "checkpoint": str(config.out), "config": _config_key(config)}
    config.out.with_name(config.out.name + ".json").write_text(json.dumps(info, indent=2))
    return report


def load_training_data(config: TrainConfig, preprocess, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Every readable image preprocessed once (float16), and three tokenized captions per item."""
    catalog = read_catalog(config.catalog)
    items = catalog.items[: config.max_items] if config.max_items else catalog.items
    policy = ImagePolicy(max_bytes=50_000_000, max_pixels=50_000_000, url_timeout=10.0, allow_private_urls=False)

    def load(item):
        try:
            image, _ = load_image(item.image, policy)
        except ImageError as exc:
            log.warning("%s: skipped for training: %s", item.source, exc)
            return None
        return preprocess(image).to(torch.float16)

    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        tensors = list(pool.map(load, items))
    kept = [(t, item) for t, item in zip(tensors, items, strict=True) if t is not None]
    if not kept:
        return torch.zeros(0), torch.zeros(0)
    pixels = torch.stack([t for t, _ in kept])
    rng = random.Random(config.seed)
    texts = []
    for _, item in kept:
        desc = item.description or item.title
        texts += [
            item.title,
            desc,
            f"{item.title}. {desc}",
            _word_dropout(item.title, rng),
            _word_dropout(item.title, rng),
        ]
    captions = tokenizer(texts).reshape(len(kept), CAPTIONS_PER_ITEM, -1)
    log.info("training data: %d images %s, captions %s", len(kept), tuple(pixels.shape[1:]), tuple(captions.shape))
    return pixels, captions


def encode_texts_grouped(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``encode_text`` of a batch as two groups, short and long texts, each cut after its last
    end-of-text token (the vectors are the same as the padded batch's).

    A batch mixes titles (about 10 tokens) with descriptions (about 30); padded to the longest, most of
    the text tower's work is on padding. Two groups, split where they cost least, take ~40% less."""
    lengths = tokens.argmax(dim=-1) + 1  # the end-of-text token has the highest id
    ordered = torch.sort(lengths).values
    n = len(ordered)
    # Cost of splitting after the i-th shortest: i texts at its length, the rest at the longest.
    cost = torch.arange(1, n + 1) * ordered + (n - torch.arange(1, n + 1)) * ordered[-1]
    cut = ordered[int(cost.argmin())]
    short = lengths <= cut  # never empty: the cut is one of the lengths
    if bool(short.all()):
        return encode_text_trimmed(model, tokens)
    grouped = torch.cat([encode_text_trimmed(model, tokens[short]), encode_text_trimmed(model, tokens[~short])])
    position = torch.cat([short.nonzero(), (~short).nonzero()]).squeeze(1)
    return grouped[torch.argsort(position)]


def _word_dropout(text: str, rng: random.Random) -> str:
    """A caption with some words left out ("red striped dress" -> "striped dress"), so the image vector
    learns each attribute on its own rather than only the whole phrase."""
    words = text.split()
    kept = [w for w in words if rng.random() < 0.5] or [rng.choice(words)] if words else []
    return " ".join(kept) or text


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flips and small shifts. Never colour: colour is what the captions name."""
    flip = torch.rand(len(images), generator=gen) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    pad = max(1, images.shape[-1] // 16)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx, dy = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
    size = images.shape[-1]
    return padded[..., dy : dy + size, dx : dx + size]


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # CLIP's recipe: no weight decay on gains, biases, embeddings and the temperature.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "bn" in name or "ln" in name or "logit_scale" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _config_key(config: TrainConfig) -> dict:
    key = asdict(config)
    key["catalog"] = str(config.catalog)
    key["out"] = str(config.out)
    for volatile in ("save_every", "threads"):
        key.pop(volatile)
    return key


def _save_state(path: Path, config: TrainConfig, model, optimizer, step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {"config": _config_key(config), "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
        tmp,
    )
    os.replace(tmp, path)


def _resume(path: Path, config: TrainConfig, model, optimizer) -> int:
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("config") != _config_key(config):
        log.warning("%s belongs to another training run; starting afresh", path)
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("resuming training from step %d (%s)", state["step"], path)
    return int(state["step"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
