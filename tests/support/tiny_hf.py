"""Tiny transformers CLIP, SigLIP and SigLIP 2 checkpoints, and a filled Hugging Face cache, built from config.

Nothing is downloaded: the CLIP tokenizer comes from the BPE file open_clip ships, the SigLIP one is a
sentencepiece model trained here on a few words, the SigLIP 2 (Gemma-style) one a small BPE vocabulary.
Each folder is written with ``save_pretrained``, as a user's checkpoint would be, and read back through
``hf:PATH``. ``fill_hub_cache`` lays files out the way huggingface_hub's cache does, so code that reads the cache
(open_clip's ``hf-hub:`` loading, ``lookalike models list``) sees them as downloaded.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import torch

from .random_diffusers import write_clip_tokenizer

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
WORDS = "a the of for red green blue yellow black dress shirt bag shoe coat every day photo product".split()


def build_tiny_clip(path: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(path / "tokenizer"))
    shutil.rmtree(path / "tokenizer")
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={**TEXT, **_special_ids(tokenizer), "max_position_embeddings": 77, "vocab_size": len(tokenizer)},
        vision_config={**VISION, "image_size": 32},
        projection_dim=16,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def build_tiny_siglip(path: Path, seed: int = 0) -> Path:
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    path.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentences = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 10
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=64,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    (path / "spiece.model").write_bytes(model.getvalue())
    tokenizer = SiglipTokenizer(str(path / "spiece.model"), model_max_length=64)
    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config={**TEXT, **_special_ids(tokenizer), "max_position_embeddings": 64, "vocab_size": len(tokenizer)},
        vision_config={**VISION, "image_size": 32},
    )
    SiglipModel(config).save_pretrained(path)
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def build_tiny_siglip2_naflex(path: Path, seed: int = 0) -> Path:
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessor,
        Siglip2Model,
        Siglip2Processor,
        Siglip2Tokenizer,
    )

    letters = sorted(set("".join(WORDS)) | {" "})
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({c: i + len(vocab) for i, c in enumerate(letters)})
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=64)
    torch.manual_seed(seed)
    config = Siglip2Config(
        text_config={**TEXT, **_special_ids(tokenizer), "max_position_embeddings": 64, "vocab_size": len(tokenizer)},
        vision_config={**VISION, "num_patches": 16},
    )
    Siglip2Model(config).save_pretrained(path)
    image_processor = Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def _special_ids(tokenizer) -> dict[str, int | None]:
    # The text configs' defaults name CLIP's ids, which are outside these small vocabularies.
    return {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}


def fill_hub_cache(cache: Path, repo_id: str, files: dict[str, Path | bytes | str], revision: str = "0" * 40) -> Path:
    """Write ``files`` (name -> source file or contents) into ``cache`` as huggingface_hub lays out a download:
    ``models--ORG--NAME/snapshots/REV/NAME`` plus ``refs/main`` naming the revision."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            shutil.copyfile(source, target)
        elif isinstance(source, bytes):
            target.write_bytes(source)
        else:
            target.write_text(source)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


def open_clip_hub_files(model_cfg: dict, weights: Path) -> dict[str, Path | str]:
    """The two files open_clip's ``hf-hub:`` loading reads: the config and the weights."""
    config = {"model_cfg": model_cfg, "preprocess_cfg": {}}
    return {"open_clip_config.json": json.dumps(config), "open_clip_model.safetensors": weights}


def build_tiny_nllb_clip(root: Path, seed: int = 0) -> str:
    """An open_clip architecture with a tiny NLLB (M2M100) text tower, as nllb-clip models have, registered with
    open_clip under the returned name. Its tokenizer is character-level, with NLLB's language codes."""
    import open_clip
    from transformers import M2M100Config, M2M100Model, NllbTokenizer

    text = root / "text"
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for char in ["▁", *sorted(set("".join(WORDS)) | set("einrotsklid"))]:
        vocab.setdefault(char, len(vocab))
    tokenizer = NllbTokenizer(vocab=vocab, merges=[], model_max_length=32)
    config = M2M100Config(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    M2M100Model(config).save_pretrained(text)
    tokenizer.save_pretrained(text)
    name = "lookalike-nllb-tiny"
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {
            "hf_model_name": str(text),
            "hf_tokenizer_name": str(text),
            "hf_proj_type": "linear",
            "hf_pooler_type": "cls_pooler",
            "context_length": 32,
        },
    }
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / f"{name}.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(root / "configs")
    return name
