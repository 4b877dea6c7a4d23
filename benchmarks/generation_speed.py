"""Seconds per variant through the real ``diffusers:PATH`` generator, on random weights built from config.

Default: the tiny test pipeline on CPU (its figures say how much the pipeline's fixed costs are, not how
fast a real model runs). ``--real-arch``: the Stable Diffusion 1.5 + ControlNet (canny) + IP-Adapter (ViT-H)
architecture at 512x512, 25 steps, fp16 on CUDA, with and without ``torch.compile``.

    python benchmarks/generation_speed.py [--n 1 4] [--steps 2 25] [--repeats 3]
    python benchmarks/generation_speed.py --real-arch [--n 1 4] [--repeats 3]     # on a GPU machine
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The offline stand-ins (tiny random models, a scripted chat server) live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from support.random_diffusers import write_random_sd15  # noqa: E402

from generation import GeneratorSettings, VaryRequest, make_generator  # noqa: E402
from generation.generator import NonFiniteOutput  # noqa: E402
from indexer import resolve_device  # noqa: E402


def product(size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle([size // 5, size // 6, size * 4 // 5, size * 5 // 6], radius=size // 10, fill=(160, 40, 40))
    draw.ellipse([size * 2 // 5, size // 12, size * 3 // 5, size // 4], outline="black", width=max(1, size // 64))
    return img


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(gen, device, req) -> float:
    sync(device)
    t0 = time.perf_counter()
    try:
        gen.generate(req)
    except NonFiniteOutput:
        # Random weights may overflow fp16; the work was done all the same, and only its time is wanted.
        NAN_SEEN.add(req.seed)
    sync(device)
    return time.perf_counter() - t0


NAN_SEEN: set[int] = set()


def measure(gen, device, image, n: int, steps: int, resolution: int, repeats: int) -> dict[str, float]:
    def req(seed: int) -> VaryRequest:
        return VaryRequest(image, "in navy blue leather", n=n, steps=steps, seed=seed, resolution=resolution)

    first = timed(gen, device, req(0))  # first call: loads weights (and compiles, where asked)
    times = [timed(gen, device, req(1000 * (r + 1))) for r in range(repeats)]
    per = statistics.median(times) / n
    return {"first_call_s": first, "s_per_variant": per, "s_per_step": per / steps}


def run(dirs, device, args, compile_: bool, resolution: int) -> None:
    settings = GeneratorSettings(**dirs.settings(), gen_compile=compile_, cpu_offload="never", data_dir=args.tmp)
    gen = make_generator(settings, device)
    image = product(resolution)
    for steps in args.steps:
        for n in args.n:
            m = measure(gen, device.device, image, n, steps, resolution, args.repeats)
            peak = f"  peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.device.type == "cuda" else ""
            print(
                f"{'compile' if compile_ else 'eager  '}  {resolution}x{resolution}  steps {steps:>3}  n {n:>2}  "
                f"{m['s_per_variant']:.3f} s/variant  ({m['s_per_step'] * 1000:.1f} ms/step/variant; "
                f"first call {m['first_call_s']:.1f} s){peak}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-arch", action="store_true", help="SD 1.5 + ControlNet + IP-Adapter, fp16, CUDA.")
    parser.add_argument("--n", type=int, nargs="+", default=None, help="Variants per request.")
    parser.add_argument("--steps", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="--real-arch: skip the torch.compile run.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = Path(tmp)
        if args.real_arch:
            if not torch.cuda.is_available():
                raise SystemExit("--real-arch needs a CUDA GPU")
            device = resolve_device("cuda")
            args.n = args.n or [1, 4]
            args.steps = args.steps or [25]
            t0 = time.perf_counter()
            dirs = write_random_sd15(Path(tmp) / "sd15", arch="sd15", dtype=torch.float16, build_on="cuda")
            torch.cuda.empty_cache()
            built = time.perf_counter() - t0
            print(f"device {torch.cuda.get_device_name()}; random SD 1.5 folders written in {built:.0f} s")
            run(dirs, device, args, compile_=False, resolution=512)
            if not args.no_compile:
                run(dirs, device, args, compile_=True, resolution=512)
            if NAN_SEEN:
                print("note: random weights gave NaN pixels in fp16 in some runs; timings are of the full pipeline")
        else:
            device = resolve_device("cpu")
            args.n = args.n or [1, 4]
            args.steps = args.steps or [2, 25]
            dirs = write_random_sd15(Path(tmp) / "tiny")
            print(f"device cpu ({torch.get_num_threads()} threads); tiny random SD 1.5 + ControlNet + IP-Adapter")
            run(dirs, device, args, compile_=False, resolution=64)


if __name__ == "__main__":
    main()
