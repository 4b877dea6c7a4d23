"""Random-weight diffusers folders, built from config, for tests and benchmarks (nothing is downloaded).

``write_random_sd15(root, arch)`` lays out three folders the way the hub repos are laid out, so the real loader
reads them through ``diffusers:PATH`` and the ``LOOKALIKE_CONTROLNET`` / ``LOOKALIKE_IP_ADAPTER`` settings:

    root/base/                                   a StableDiffusionPipeline folder (model_index.json, unet, vae, ...)
    root/controlnet-canny/                       a ControlNetModel made with ``ControlNetModel.from_unet``
    root/ip-adapter/models/ip-adapter_sd15.safetensors
    root/ip-adapter/models/image_encoder/        a CLIPVisionModelWithProjection

``arch="tiny"`` follows diffusers' own ``get_dummy_components()`` (a few thousand parameters, 64x64 images);
``arch="sd15"`` is the real Stable Diffusion 1.5 + ControlNet + IP-Adapter (ViT-H image encoder) architecture,
for speed figures only: random weights draw noise.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Arch = Literal["tiny", "sd15"]


@dataclass(frozen=True)
class RandomPipelineDirs:
    base: Path
    controlnet: Path
    ip_adapter: Path
    ip_adapter_subfolder: str = "models"
    ip_adapter_weight: str = "ip-adapter_sd15.safetensors"

    def settings(self) -> dict[str, str]:
        """The ``GeneratorSettings`` fields that point the loader at these folders."""
        return {
            "generator": f"diffusers:{self.base}",
            "controlnet": str(self.controlnet),
            "ip_adapter": str(self.ip_adapter),
            "ip_adapter_subfolder": self.ip_adapter_subfolder,
            "ip_adapter_weight": self.ip_adapter_weight,
        }


def write_clip_tokenizer(target: Path) -> Path:
    """A CLIPTokenizer folder built from the BPE file that open_clip ships (the one CLIP and SD use)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        # Same slice as CLIP's SimpleTokenizer: 49152 - 256 - 2 merges after the version line.
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    target.mkdir(parents=True, exist_ok=True)
    (target / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(target / "vocab.json"),
        str(target / "merges.txt"),
        model_max_length=77,
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(target)
    return target


def write_random_sd15(
    root: Path, arch: Arch = "tiny", dtype: torch.dtype = torch.float32, build_on: str = "cpu"
) -> RandomPipelineDirs:
    """Write base, ControlNet and IP-Adapter folders with seeded random weights under ``root``.

    ``build_on="cuda"`` initialises the modules on the GPU, which is much faster for ``arch="sd15"``.
    """
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    root = Path(root)
    dirs = RandomPipelineDirs(root / "base", root / "controlnet-canny", root / "ip-adapter")
    torch.manual_seed(0)
    with torch.device(build_on):
        unet, vae, text_encoder, image_encoder = _components(arch)
        torch.manual_seed(0)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=(16, 32) if arch == "tiny" else (16, 32, 96, 256)
        )
        if arch == "tiny":
            _unzero(controlnet)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    tokenizer_dir = write_clip_tokenizer(root / "tokenizer-src")
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    if dtype != torch.float32:
        # Cast only when asked: diffusers logs a notice on every .to(dtype) of a model.
        pipe.to(dtype=dtype)
        controlnet.to(dtype=dtype)
        image_encoder.to(dtype=dtype)
    pipe.save_pretrained(dirs.base)
    controlnet.save_pretrained(dirs.controlnet)

    models = dirs.ip_adapter / dirs.ip_adapter_subfolder
    image_encoder.save_pretrained(models / "image_encoder")
    state = ip_adapter_state_dict(unet, image_encoder.config.projection_dim)
    flat = {f"{part}.{key}": value.to(dtype).contiguous() for part, sd in state.items() for key, value in sd.items()}
    save_file(flat, models / dirs.ip_adapter_weight)
    return dirs


def _unzero(controlnet) -> None:
    """Give the zero-initialised convolutions random weights, as a trained ControlNet has: otherwise the
    condition adds nothing and ``--structure`` could not be seen to do anything. (Speed is the same either
    way, so the full-size architecture keeps its zeros and stays clear of fp16 overflow.)"""
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    zero_convs.append(controlnet.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for conv in zero_convs:
            torch.nn.init.normal_(conv.weight, std=0.1)
            conv.bias.fill_(0.1)


def ip_adapter_state_dict(unet, image_embed_dim: int) -> dict[str, dict[str, torch.Tensor]]:
    """Random IP-Adapter weights in the original (h94) layout: ``image_proj`` plus numbered ``ip_adapter`` keys."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor
    from diffusers.models.embeddings import ImageProjection

    cross = unet.config.cross_attention_dim
    channels = list(unet.config.block_out_channels)
    adapter: dict[str, torch.Tensor] = {}
    # The h94 files number every attention processor and keep the odd (cross-attention) ones.
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        sd = IPAdapterAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, scale=1.0).state_dict()
        adapter[f"{key_id}.to_k_ip.weight"] = sd["to_k_ip.0.weight"]
        adapter[f"{key_id}.to_v_ip.weight"] = sd["to_v_ip.0.weight"]
        key_id += 2
    proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=image_embed_dim, num_image_text_embeds=4)
    sd = proj.state_dict()
    image_proj = {
        "proj.weight": sd["image_embeds.weight"],
        "proj.bias": sd["image_embeds.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    return {"image_proj": image_proj, "ip_adapter": adapter}


def _components(arch: Arch):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    if arch == "tiny":
        # diffusers' StableDiffusionControlNetPipeline get_dummy_components(), with CLIP's real 49408-token vocab.
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8),
            layers_per_block=2,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=1,
        )
        vae = AutoencoderKL(
            block_out_channels=[4, 8],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
            norm_num_groups=2,
        )
        text = CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=49408,
        )
        vision = CLIPVisionConfig(
            hidden_size=32,
            image_size=32,
            projection_dim=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_channels=3,
            num_hidden_layers=2,
            patch_size=8,
        )
    elif arch == "sd15":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=[128, 256, 512, 512],
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
        # CLIP ViT-L/14 text tower (SD 1.5) and the ViT-H/14 image tower that ip-adapter_sd15 uses.
        text = CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            projection_dim=768,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
        vision = CLIPVisionConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_attention_heads=16,
            num_hidden_layers=32,
            patch_size=14,
            image_size=224,
            projection_dim=1024,
            hidden_act="gelu",
        )
    else:
        raise ValueError(f"unknown architecture {arch!r}: use tiny or sd15")
    return unet, vae, CLIPTextModel(text), CLIPVisionModelWithProjection(vision)
