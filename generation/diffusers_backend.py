"""``diffusers:REPO_OR_PATH``: ControlNet (structure) + IP-Adapter (look) + text (the change).

Pipelines are built on first use and kept: the first one loads the base weights, later ones (another control
kind) are made with ``from_pipe`` and share its modules, so switching canny -> depth -> none loads only the
extra ControlNet. One lock serialises calls, because a pipeline's scheduler and IP-Adapter scale are state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from indexer import Device
from indexer.weights import is_local_location, missing_labels

from .conditions import DepthEstimator, canny_condition, square_reference
from .generator import (
    Generated,
    GeneratorError,
    GeneratorWeightsMissing,
    NonFiniteOutput,
    RequestError,
    VaryRequest,
    check_request,
    fit_size,
)
from .settings import FAMILIES, FamilyDefaults, GeneratorSettings
from .weights import Components, family_from_config, generator_sources

log = logging.getLogger(__name__)

T = TypeVar("T")
# Room for activations and the VAE decode on top of the weights before model offload is chosen.
ACTIVATION_MARGIN = 3 * 1024**3
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _load_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    # Missing or unreachable weights (hub errors are OSErrors), bad configs, corrupt files, absent extras.
    # TypeError and AttributeError stay out: those are bugs here, not a user's weights.
    return (OSError, ValueError, KeyError, ImportError, SafetensorError)


LOAD_ERRORS = _load_errors()


class DiffusersGenerator:
    def __init__(self, spec: str, base: str, settings: GeneratorSettings, device: Device):
        self.spec = spec
        self.base = str(Path(base).expanduser()) if is_local_location(base) else base
        self.settings = settings
        self.device = device
        self.family: FamilyDefaults = FAMILIES[self._detect_family()]
        self.parts = Components.resolve(self.base, settings, self.family)
        if settings.safety_checker and not self.family.safety_checker:
            raise GeneratorError(
                f"LOOKALIKE_SAFETY_CHECKER is on, but diffusers has no safety checker for {self.family.name} "
                "pipelines: turn it off (and moderate outputs another way) or use an SD 1.5 pipeline that ships one"
            )
        self._pipes: dict[str, Any] = {}
        self._controlnets: dict[str, Any] = {}
        self._offload = settings.cpu_offload == "always" and device.device.type == "cuda"
        self._offloaded_for: str | None = None
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()
        self._depth = DepthEstimator(settings.depth_model, device.device)

    # -- what will be used ------------------------------------------------------------------------

    @property
    def ip_adapter(self) -> str | None:
        return self.parts.ip_adapter

    def controlnet_location(self, control: str) -> str:
        return self.parts.controlnet(control)

    def size(self, request: VaryRequest) -> tuple[int, int]:
        longest = request.resolution or self.settings.gen_resolution or self.family.resolution
        if longest > self.settings.max_resolution:
            raise RequestError(
                f"resolution {longest} is over the cap of {self.settings.max_resolution} "
                "(LOOKALIKE_MAX_RESOLUTION); lower LOOKALIKE_GEN_RESOLUTION"
            )
        return fit_size(*request.image.size, longest)

    def describe(self, request: VaryRequest) -> dict[str, Any]:
        check_request(request, self.settings)
        width, height = self.size(request)
        ip = self.ip_adapter
        ip_sub = self.parts.ip_subfolder
        ip_weight = self.parts.ip_weight
        control = request.control
        return {
            **request.parameters(),
            "structure": request.structure if control != "none" else None,
            "style": request.style if ip else None,
            "backend": "diffusers",
            "family": self.family.name,
            "models": {
                "base": self._weights_id(self.base),
                "controlnet": self._weights_id(self.controlnet_location(control)) if control != "none" else None,
                "ip_adapter": f"{self._weights_id(ip)}/{ip_sub}/{ip_weight}".replace("//", "/") if ip else None,
                "depth": self.settings.depth_model if control == "depth" else None,
                "lora": [self._weights_id(x) for x in self.settings.lora],
            },
            "lora_scale": self.settings.lora_scale if self.settings.lora else None,
            "scheduler": self.settings.scheduler if self.family.schedulers else "flow-match",
            "guidance_scale": self._guidance(),
            "negative_prompt": self.settings.negative_prompt if self.family.negative_prompt else None,
            "width": width,
            "height": height,
            "dtype": str(self.device.dtype).removeprefix("torch."),
            "device": self.device.device.type,
            "safety_checker": self.settings.safety_checker,
        }

    # -- generation -------------------------------------------------------------------------------

    def generate(self, request: VaryRequest) -> list[Generated]:
        info = self.describe(request)
        size = (info["width"], info["height"])
        condition = None
        if request.control == "canny":
            condition = canny_condition(request.image, size)
        elif request.control == "depth":
            condition = self._depth.condition(request.image, size)
        with self._lock:
            pipe = self._pipeline(request.control)
            kwargs = self._call_kwargs(request, info, condition)
            if self.ip_adapter:
                pipe.set_ip_adapter_scale(request.style)

            def call():
                # Fresh generators per attempt: a retry after OOM must draw the same noise.
                seeds = [torch.Generator("cpu").manual_seed(s) for s in request.seeds]
                if self._offload:
                    self._offload_for(pipe, request.control)
                return pipe(**kwargs, generator=seeds)

            output = run_with_oom_fallback(call, lambda: self._enable_offload(pipe, request.control), info)
        pixels = np.asarray(output.images)
        if not np.isfinite(pixels).all():
            raise NonFiniteOutput(
                f"{self.spec} produced NaN pixels ({info['dtype']} on {info['device']}): the weights overflow at "
                "this precision; run in float32 (LOOKALIKE_DEVICE=cpu) or use weights fixed for fp16"
            )
        flags = output.nsfw_content_detected if hasattr(output, "nsfw_content_detected") else None
        images = [Image.fromarray((np.clip(p, 0, 1) * 255).round().astype(np.uint8)) for p in pixels]
        return [
            Generated(image, seed, bool(flags[i]) if flags else False)
            for i, (image, seed) in enumerate(zip(images, request.seeds, strict=True))
        ]

    def _call_kwargs(self, request: VaryRequest, info: dict[str, Any], condition: Image.Image | None) -> dict:
        kwargs: dict[str, Any] = {
            "prompt": request.text,
            "num_inference_steps": request.steps,
            "guidance_scale": info["guidance_scale"],
            "num_images_per_prompt": request.n,
            "height": info["height"],
            "width": info["width"],
            "output_type": "np",
        }
        if info["negative_prompt"]:
            kwargs["negative_prompt"] = info["negative_prompt"]
        if condition is not None:
            kwargs["control_image" if self.family.name == "flux" else "image"] = condition
            kwargs["controlnet_conditioning_scale"] = request.structure
        if self.ip_adapter:
            kwargs["ip_adapter_image"] = square_reference(request.image)
        return kwargs

    def _guidance(self) -> float:
        return self.settings.guidance_scale if self.settings.guidance_scale is not None else self.family.guidance

    # -- loading ----------------------------------------------------------------------------------

    def _pipeline(self, control: str):
        if control in self._pipes:
            return self._pipes[control]
        import diffusers

        name = self.family.plain_pipeline if control == "none" else self.family.controlnet_pipeline
        cls = getattr(diffusers, name)
        extra = {} if control == "none" else {"controlnet": self._controlnet(control)}
        if self._pipes:
            root = next(iter(self._pipes.values()))
            pipe = cls.from_pipe(root, dtype=self.device.dtype, **extra)
        else:
            pipe = self._load_root(cls, extra)
        pipe.set_progress_bar_config(disable=True)
        self._place(pipe, control)
        self._pipes[control] = pipe
        return pipe

    def _load_root(self, cls, extra: dict[str, Any]):
        kwargs: dict[str, Any] = {"dtype": self.device.dtype, **extra}
        if self.family.name == "sd15" and not self.settings.safety_checker:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        log.info("loading %s (%s) on %s", self.base, cls.__name__, self.device)
        pipe = self._load(
            "base pipeline",
            "LOOKALIKE_GENERATOR, as diffusers:DIR",
            self.base,
            cls.from_pretrained,
            self.base,
            **kwargs,
        )
        if self.settings.safety_checker and getattr(pipe, "safety_checker", None) is None:
            raise GeneratorError(
                f"LOOKALIKE_SAFETY_CHECKER is on, but {self.base} has no safety_checker folder: use a pipeline "
                "folder that ships one (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) or turn the setting off"
            )
        if self.ip_adapter:
            self._load_ip_adapter(pipe)
        if self.family.schedulers:
            pipe.scheduler = _scheduler(self.settings.scheduler, pipe.scheduler.config)
        if self.settings.lora:
            self._load_loras(pipe)
        if self.settings.gen_compile:
            self._compile(getattr(pipe, "transformer" if self.family.name == "flux" else "unet"))
        return pipe

    def _controlnet(self, control: str):
        if control not in self._controlnets:
            import diffusers

            cls = getattr(diffusers, self.family.controlnet_class)
            setting = "LOOKALIKE_CONTROLNET_DEPTH" if control == "depth" else "LOOKALIKE_CONTROLNET"
            location = self.controlnet_location(control)
            model = self._load(
                f"{control} ControlNet", setting, location, cls.from_pretrained, location, dtype=self.device.dtype
            )
            if self.settings.gen_compile:
                self._compile(model)
            self._controlnets[control] = model
        return self._controlnets[control]

    def _load_ip_adapter(self, pipe) -> None:
        location = self.ip_adapter
        sub, weight, encoder = self.parts.ip_subfolder, self.parts.ip_weight, self.parts.image_encoder
        tried = f"{location} / {sub or '.'} / {weight} (image encoder: {encoder})"
        if self.family.name == "flux":
            self._load(
                "IP-Adapter",
                "LOOKALIKE_IP_ADAPTER",
                tried,
                lambda: pipe.load_ip_adapter(
                    location,
                    weight_name=weight,
                    subfolder=sub,
                    image_encoder_pretrained_model_name_or_path=encoder,
                    image_encoder_dtype=self.device.dtype,
                ),
            )
        else:
            self._load(
                "IP-Adapter",
                "LOOKALIKE_IP_ADAPTER",
                tried,
                lambda: pipe.load_ip_adapter(location, subfolder=sub, weight_name=weight, image_encoder_folder=encoder),
            )

    def _load_loras(self, pipe) -> None:
        from diffusers.utils import USE_PEFT_BACKEND

        if not USE_PEFT_BACKEND:
            raise GeneratorError(
                "LOOKALIKE_LORA is set, but loading LoRA weights needs the peft package: pip install peft"
            )
        names = []
        for i, location in enumerate(self.parts.loras):
            path = Path(location).expanduser()
            name = f"lora{i}"
            if path.is_file():
                args, kwargs = (str(path.parent),), {"weight_name": path.name, "adapter_name": name}
            else:
                args, kwargs = (location,), {"adapter_name": name}
            self._load("LoRA", "LOOKALIKE_LORA", location, pipe.load_lora_weights, *args, **kwargs)
            names.append(name)
        pipe.set_adapters(names, adapter_weights=[self.settings.lora_scale] * len(names))

    def _load(self, what: str, setting: str, tried: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one load step; a failure names the setting, what was tried, and how to use local weights."""
        try:
            return fn(*args, **kwargs)
        except LOAD_ERRORS as exc:
            missing = self._missing()
            if missing:
                raise GeneratorWeightsMissing(self.spec, missing, setting=setting.split(",")[0]) from exc
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
            reason = str(exc).strip()[:300].rstrip(".")
            raise GeneratorError(
                f"cannot load the {what} for {self.spec}: tried {tried!r} ({setting}): "
                f"{type(exc).__name__}: {reason}. Weights are read from a local folder or the "
                f"Hugging Face cache{' (downloads are off: HF_HUB_OFFLINE=1)' if offline else ''}. Point {setting} "
                "at a local folder holding them, e.g. one made with `hf download REPO --local-dir DIR`; "
                "see generation/README.md for the folders each setting expects."
            ) from exc

    def _detect_family(self) -> str:
        if self.settings.generator_family != "auto":
            return self.settings.generator_family
        from diffusers import DiffusionPipeline

        if is_local_location(self.base) and not Path(self.base).is_dir():
            raise GeneratorError(
                f"generator spec {self.spec!r} (LOOKALIKE_GENERATOR): {self.base!r} is not a folder. Point it at a "
                "diffusers pipeline folder (one with model_index.json), or at a hub id in the local cache"
            )
        setting = "LOOKALIKE_GENERATOR, as diffusers:DIR"
        config = self._load("base pipeline config", setting, self.base, DiffusionPipeline.load_config, self.base)
        return family_from_config(config, self.base)

    def _missing(self) -> list[str]:
        """Which of the generator's weight sources are not on this machine."""
        try:
            return missing_labels(generator_sources(self.settings))
        except (GeneratorError, *LOAD_ERRORS):  # a check that fails must not hide the load error
            log.debug("cannot check the weights of %s", self.spec, exc_info=True)
            return []

    # -- placement --------------------------------------------------------------------------------

    def _place(self, pipe, control: str) -> None:
        device = self.device.device
        if device.type != "cuda":
            pipe.to(device)
            return
        if not self._offload and self.settings.cpu_offload == "auto" and _memory_short(pipe, device):
            log.warning("free GPU memory is short for %s: using model CPU offload", self.base)
            self._offload = True
        if self._offload:
            self._offload_for(pipe, control)
            return
        try:
            pipe.to(device)
        except torch.OutOfMemoryError:
            log.warning("CUDA out of memory loading %s: using model CPU offload", self.base)
            torch.cuda.empty_cache()
            self._enable_offload(pipe, control)

    def _enable_offload(self, pipe, control: str) -> bool:
        """Turn on model CPU offload; False when it was on already (nothing left to try)."""
        if self._offload or self.device.device.type != "cuda":
            return False
        self._offload = True
        torch.cuda.empty_cache()
        self._offload_for(pipe, control)
        return True

    def _offload_for(self, pipe, control: str) -> None:
        # Pipelines made with from_pipe share modules, so offload hooks are re-installed for the one in use.
        if self._offloaded_for != control:
            pipe.enable_model_cpu_offload(device=self.device.device)
            self._offloaded_for = control

    def _compile(self, module: torch.nn.Module) -> None:
        if self.device.device.type != "cuda":
            log.warning("LOOKALIKE_GEN_COMPILE applies on CUDA only; not compiling on %s", self.device.device)
            return
        if self.family.name != "flux":
            module.to(memory_format=torch.channels_last)
        module.compile()

    def _weights_id(self, location: str) -> str:
        if location not in self._ids:
            self._ids[location] = weights_id(location)
        return self._ids[location]


def run_with_oom_fallback(call: Callable[[], T], offload: Callable[[], bool], info: dict[str, Any]) -> T:
    """Run ``call``; on CUDA out-of-memory, turn on CPU offload and run it once more, then give up clearly."""
    try:
        return call()
    except torch.OutOfMemoryError as first:
        if offload():
            log.warning("CUDA out of memory; retrying with model CPU offload")
            try:
                return call()
            except torch.OutOfMemoryError as exc:
                raise _oom_error(info, offloaded=True) from exc
        raise _oom_error(info, offloaded=False) from first


def _oom_error(info: dict[str, Any], offloaded: bool) -> GeneratorError:
    how = "even with model CPU offload" if offloaded else "with CPU offload already on"
    return GeneratorError(
        f"CUDA out of memory {how} for {info.get('n')} variant(s) at {info.get('width')}x{info.get('height')}: "
        "ask for fewer variants (--n), a lower LOOKALIKE_GEN_RESOLUTION, or free the GPU"
    )


def weights_id(location: str) -> str:
    """A model's identity for cache keys: hub ids as given; local folders by their weight files' names, sizes
    and modification times (hashing gigabytes of weights on every start would cost more than it saves)."""
    path = Path(location).expanduser()
    if not path.exists():
        return location
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        if f.suffix in WEIGHT_SUFFIXES or f.name.endswith(".json"):
            st = f.stat()
            h.update(f"{f.relative_to(path) if f != path else f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return f"{path.name}@{h.hexdigest()[:12]}"


def _scheduler(name: str, config: Any):
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", use_karras_sigmas=True)


def _memory_short(pipe, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    # Modules shared with a pipeline already on the GPU cost nothing more.
    weights = sum(
        p.numel() * p.element_size()
        for module in pipe.components.values()
        if isinstance(module, torch.nn.Module)
        for p in module.parameters()
        if p.device.type != "cuda"
    )
    return weights + ACTIVATION_MARGIN > free
