"""``lookalike models``: fetch model weights ahead of time (``pull``) and check which are on this machine (``list``).

The serving commands (serve, ui, ask, vary) never download, so weights come from here (or from a copied
Hugging Face cache). Downloads go to the standard Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``), where
transformers, diffusers, sentence-transformers and open_clip all look; open_clip's few URL-only weights go
to its own cache.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from generation import GeneratorError, GeneratorSettings, generator_sources
from indexer import EncoderError, IndexManifest, encoder_sources
from indexer.weights import LocalPath, NoWeights, PullError, WeightSource, hub_cache_dir, pull_sources
from vlm import VLMSettings

from .cli import AsJson, DataDir, Quiet, UserError, app, emit, resolve_models, user_errors

models_app = typer.Typer(
    name="models",
    help="Model weights: fetch them before serving (pull), and see which are on this machine (list).",
    no_args_is_help=True,
)
app.add_typer(models_app)

SPEC_FORMS = "openclip:ARCH/TAG, openclip:hf-hub:ORG/NAME, hf:REPO, st:NAME, diffusers:REPO or openai:MODEL"


@dataclass(frozen=True)
class Configured:
    """A model this installation uses: its role, its spec, and the setting that names it."""

    role: str
    spec: str
    setting: str


def configured_models(settings: GeneratorSettings) -> list[Configured]:
    """The CLIP and text models (the index's own, when there is one), the VLM and the generator."""
    clip, text = resolve_models(settings, IndexManifest.load(settings.data_dir))
    found = [
        Configured("clip", clip, "LOOKALIKE_CLIP_MODEL"),
        Configured("text", text, "LOOKALIKE_TEXT_MODEL"),
    ]
    vlm = VLMSettings(data_dir=settings.data_dir).vlm
    if vlm:
        found.append(Configured("vlm", vlm, "LOOKALIKE_VLM"))
    found.append(Configured("generator", settings.generator, "LOOKALIKE_GENERATOR"))
    return found


def sources_for(spec: str, settings: GeneratorSettings) -> list[WeightSource]:
    """What ``spec`` loads. A generator spec brings its ControlNet, IP-Adapter and so on, as settings name them."""
    prefix = spec.partition(":")[0]
    match prefix:
        case "diffusers":
            return generator_sources(settings.model_copy(update={"generator": spec}))
        case "openai":
            return [NoWeights(f"{spec} (a remote API)")]
        case "openclip" | "hf" | "st":
            # hf: VLMs and hf: encoders are both transformers repos, fetched alike.
            return encoder_sources(spec)
        case _:
            raise UserError(f"cannot read model spec {spec!r}: use {SPEC_FORMS}")


def _settings(data_dir: Path | None) -> GeneratorSettings:
    return GeneratorSettings(**({"data_dir": data_dir} if data_dir else {}))


def _kind(source: WeightSource) -> str:
    if isinstance(source, NoWeights):
        return "none"
    return "local" if isinstance(source, LocalPath) else "hub"


def _status(entry: Configured, settings: GeneratorSettings) -> dict[str, Any]:
    try:
        sources = sources_for(entry.spec, settings)
        error = None
    except (UserError, GeneratorError, EncoderError) as exc:
        sources, error = [], str(exc)
    rows = [{"source": s.label, "kind": _kind(s), "present": s.present()} for s in sources]
    return {
        "role": entry.role,
        "spec": entry.spec,
        "setting": entry.setting,
        "present": error is None and all(r["present"] for r in rows),
        "missing": [r["source"] for r in rows if not r["present"]],
        "sources": rows,
        **({"error": error} if error else {}),
    }


@models_app.command("list")
def list_models(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Show the configured models (index, VLM, generator) and whether their weights are on this machine."""
    with user_errors():
        settings = _settings(data_dir)
        rows = [_status(entry, settings) for entry in configured_models(settings)]
        lines = [f"Hugging Face cache: {hub_cache_dir()}"]
        for row in rows:
            mark = "present" if row["present"] else "error" if "error" in row else "missing"
            lines.append(f"{row['role']:<10} {mark:<8} {row['spec']}  ({row['setting']})")
            if "error" in row:
                lines.append(f"{'':<20}{row['error']}")
            lines += [f"{'':<20}missing: {label}" for label in row["missing"]]
        if any(not r["present"] for r in rows):
            lines.append("Fetch missing weights with `lookalike models pull SPEC` (no SPEC: all of the above).")
        emit({"cache": hub_cache_dir(), "models": rows}, as_json, "\n".join(lines))


@models_app.command("pull")
def pull(
    specs: Annotated[
        list[str] | None,
        typer.Argument(help=f"Model specs ({SPEC_FORMS}); default: the configured ones (`lookalike models list`)."),
    ] = None,
    data_dir: DataDir = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Download model weights into the Hugging Face cache now, so serving never has to."""
    with user_errors():
        settings = _settings(data_dir)
        targets = specs or [entry.spec for entry in configured_models(settings)]
        _progress_bars(not quiet)
        done: list[dict[str, str]] = []
        for spec in targets:

            def report(source: WeightSource, status: str, spec: str = spec) -> None:
                done.append({"spec": spec, "source": source.label, "status": status})
                if not quiet:
                    typer.echo(f"{spec}: {source.label}: {status}", err=True)

            try:
                pull_sources(lambda spec=spec: sources_for(spec, settings), report)
            except PullError as exc:
                raise UserError(f"{spec}: {exc}") from None
        summary = "\n".join(f"{d['status']:<11} {d['source']}  ({d['spec']})" for d in done)
        emit({"cache": hub_cache_dir(), "pulled": done}, as_json, summary or "nothing to fetch")


def _progress_bars(on: bool) -> None:
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not on:
        disable_progress_bars()
        return
    with warnings.catch_warnings():
        # HF_HUB_DISABLE_PROGRESS_BARS=1 set by the user wins; huggingface_hub would only warn about it.
        warnings.simplefilter("ignore")
        enable_progress_bars()
