"""Generation settings (``LOOKALIKE_*``) and the defaults of each diffusers model family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from indexer import Settings

DEFAULT_GENERATOR = "diffusers:stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_NEGATIVE = (
    "lowres, blurry, jpeg artifacts, deformed, distorted, disfigured, watermark, text, logo, signature, "
    "cropped, out of frame, extra limbs, bad anatomy, worst quality, low quality"
)

Family = Literal["sd15", "sdxl", "flux"]


OPTIONAL_FIELDS = (
    "controlnet",
    "controlnet_depth",
    "depth_model",
    "ip_adapter",
    "ip_adapter_subfolder",
    "ip_adapter_weight",
    "ip_adapter_image_encoder",
    "generator_api_key",
    "generator_daily_tokens",
    "guidance_scale",
    "gen_resolution",
)


class GeneratorSettings(Settings):
    """How variants are made. Empty model fields fall back to the family's defaults (see ``FAMILIES``)."""

    generator: str = Field(
        DEFAULT_GENERATOR,
        description="Generator spec: diffusers:REPO_OR_PATH (a diffusers pipeline folder) or openai:MODEL[@BASE_URL].",
    )
    generator_family: Literal["auto", "sd15", "sdxl", "flux"] = Field(
        "auto", description="Model family; auto reads the pipeline's model_index.json."
    )
    controlnet: str | None = Field(None, description="Canny ControlNet: hub id or local folder.")
    controlnet_depth: str | None = Field(None, description="Depth ControlNet: hub id or local folder.")
    depth_model: str | None = Field(
        None, description="transformers depth-estimation model (id or folder) for --control depth."
    )
    ip_adapter: str | None = Field(None, description="IP-Adapter repo or folder; 'none' turns it off.")
    ip_adapter_subfolder: str | None = None
    ip_adapter_weight: str | None = Field(None, description="IP-Adapter weight file name inside the subfolder.")
    ip_adapter_image_encoder: str | None = Field(
        None, description="Image encoder folder (relative to the subfolder, or a repo/path for Flux)."
    )
    scheduler: Literal["dpm", "unipc"] = Field("dpm", description="DPM-Solver++ (Karras sigmas) or UniPC.")
    gen_compile: bool = Field(False, description="torch.compile the denoiser and ControlNet (CUDA only).")
    cpu_offload: Literal["auto", "always", "never"] = Field(
        "auto", description="Model CPU offload on CUDA; auto turns it on when free GPU memory is short."
    )
    # NoDecode: the environment gives a comma-separated list, not JSON.
    lora: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="LoRA weights: files, folders or hub ids, comma separated."
    )
    lora_scale: float = Field(0.8, ge=0, le=2)
    negative_prompt: str = DEFAULT_NEGATIVE
    guidance_scale: float | None = Field(None, ge=0, le=30, description="Default: the family's.")
    gen_resolution: int | None = Field(None, ge=64, description="Longest side of a variant; default: the family's.")
    max_variants: int = Field(8, ge=1, le=64)
    gen_cache_max_bytes: int = Field(
        2 * 1024**3, ge=1024**2, description="Disk the variant cache may use; least recently used entries go first."
    )
    max_steps: int = Field(50, ge=1, le=500)
    max_resolution: int = Field(1024, ge=64, le=4096)
    safety_checker: bool = Field(
        False, description="Run the pipeline's own safety checker (SD 1.5 folders that ship one)."
    )
    generator_api_key: str | None = Field(None, description="API key for openai: specs; default OPENAI_API_KEY.")
    generator_timeout: float = Field(120.0, gt=0)
    generator_daily_tokens: int | None = Field(
        None, ge=1, description="Tokens a paid images API may spend per UTC day (as it reports them); unset: no cap."
    )
    lookalikes: int = Field(5, ge=1, le=50, description="Real products shown per variant.")

    @field_validator("lora", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(*OPTIONAL_FIELDS, mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # Compose and shells pass unset variables as "", which means "not set" here.
        return None if value == "" else value


@dataclass(frozen=True)
class FamilyDefaults:
    """What a family loads unless settings say otherwise, and which diffusers classes run it."""

    name: Family
    base: str
    controlnet_pipeline: str
    plain_pipeline: str
    controlnet_class: str
    canny: str
    depth: str
    ip_adapter: str
    ip_adapter_subfolder: str
    ip_adapter_weight: str
    image_encoder: str
    resolution: int
    guidance: float
    # SD 1.5 repos ship a safety checker; SDXL and Flux have none in diffusers.
    safety_checker: bool
    # Flux uses its flow-matching scheduler; the dpm/unipc setting applies to SD 1.5 and SDXL.
    schedulers: bool
    negative_prompt: bool


FAMILIES: dict[str, FamilyDefaults] = {
    "sd15": FamilyDefaults(
        name="sd15",
        base="stable-diffusion-v1-5/stable-diffusion-v1-5",
        controlnet_pipeline="StableDiffusionControlNetPipeline",
        plain_pipeline="StableDiffusionPipeline",
        controlnet_class="ControlNetModel",
        canny="lllyasviel/control_v11p_sd15_canny",
        depth="lllyasviel/control_v11f1p_sd15_depth",
        ip_adapter="h94/IP-Adapter",
        ip_adapter_subfolder="models",
        ip_adapter_weight="ip-adapter_sd15.safetensors",
        image_encoder="image_encoder",
        resolution=512,
        guidance=7.5,
        safety_checker=True,
        schedulers=True,
        negative_prompt=True,
    ),
    "sdxl": FamilyDefaults(
        name="sdxl",
        base="stabilityai/stable-diffusion-xl-base-1.0",
        controlnet_pipeline="StableDiffusionXLControlNetPipeline",
        plain_pipeline="StableDiffusionXLPipeline",
        controlnet_class="ControlNetModel",
        canny="diffusers/controlnet-canny-sdxl-1.0",
        depth="diffusers/controlnet-depth-sdxl-1.0",
        ip_adapter="h94/IP-Adapter",
        ip_adapter_subfolder="sdxl_models",
        ip_adapter_weight="ip-adapter_sdxl.safetensors",
        image_encoder="image_encoder",
        resolution=1024,
        guidance=5.0,
        safety_checker=False,
        schedulers=True,
        negative_prompt=True,
    ),
    "flux": FamilyDefaults(
        name="flux",
        base="black-forest-labs/FLUX.1-dev",
        controlnet_pipeline="FluxControlNetPipeline",
        plain_pipeline="FluxPipeline",
        controlnet_class="FluxControlNetModel",
        canny="InstantX/FLUX.1-dev-Controlnet-Canny",
        depth="Shakker-Labs/FLUX.1-dev-ControlNet-Depth",
        ip_adapter="XLabs-AI/flux-ip-adapter",
        ip_adapter_subfolder="",
        ip_adapter_weight="ip_adapter.safetensors",
        image_encoder="openai/clip-vit-large-patch14",
        resolution=1024,
        guidance=3.5,
        safety_checker=False,
        schedulers=False,
        # FLUX.1-dev is guidance-distilled: a negative prompt needs true CFG (twice the compute), so it is not sent.
        negative_prompt=False,
    ),
}
