"""Model weights on this machine: the Hugging Face cache, ahead-of-time downloads, and serving without downloads.

A model spec needs files from one or more ``WeightSource``s: a hub repo (or the part of it the loader reads),
open_clip's own pretrained weights, or a local path. ``lookalike models pull`` fetches them into the standard
Hugging Face cache and ``lookalike models list`` checks them, both through these sources.

The serving commands turn downloads off for the whole process (``forbid_downloads``), so a request never waits
on the hub: a file that is not here fails at once, and the loaders turn that into ``WeightsMissing``, whose
message names the ``lookalike models pull`` command that fetches it.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

# What transformers and sentence-transformers read from a repo: configs, tokenizers, chat templates, weights.
# Other formats (ONNX, OpenVINO, Core ML, TensorFlow, Flax) are never loaded here, so they are not fetched.
TRANSFORMERS_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.safetensors")
TOKENIZER_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken")
OTHER_FORMATS = ("onnx/*", "openvino/*", "coreml/*", "*.onnx", "*.h5", "*.msgpack", "*.ot")
WEIGHTS_REQUIRED = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# open_clip's file names in a hub repo; it prefers the safetensors one when both are there.
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Where open_clip keeps weights it downloads from a URL rather than from the hub (its default cache_dir).
OPEN_CLIP_URL_CACHE = Path("~/.cache/clip")


class WeightsMissing(RuntimeError):
    """Weights a spec needs are not on this machine; the message names the command that fetches them.

    The packages raise subclasses that are also their own error types (``EncoderWeightsMissing``,
    ``VLMWeightsMissing``, ``GeneratorWeightsMissing``), so existing handlers still catch them."""

    def __init__(self, spec: str, missing: Sequence[str] = (), setting: str | None = None):
        self.spec = spec
        self.missing = tuple(missing)
        what = f": {', '.join(self.missing)} not in the Hugging Face cache ({hub_cache_dir()})" if missing else ""
        off = " Downloads are off here (HF_HUB_OFFLINE=1 or a serving command)." if downloads_forbidden() else ""
        alternative = f", or point {setting} at a local folder" if setting else ""
        super().__init__(
            f"the weights of {spec} are not on this machine{what}.{off} "
            f"Fetch them first with `{pull_command(spec)}`{alternative}."
        )


class PullError(RuntimeError):
    """A download that cannot run (offline, unknown repo, a local path that is not there)."""


def pull_command(spec: str) -> str:
    return f"lookalike models pull {shlex.quote(spec)}"


# -- downloads on or off ------------------------------------------------------------------------------------------


def forbid_downloads() -> None:
    """From now on this process reads weights from local files only (``HF_HUB_OFFLINE`` semantics).

    Called by the serving commands (serve, ui, ask, vary): a missing file then fails in milliseconds instead
    of a request spending its time retrying the hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    # huggingface_hub reads the variable once, at import (the CLI has imported it by now); its HTTP layer,
    # and transformers, diffusers and open_clip through it, check this flag on every request.
    constants.HF_HUB_OFFLINE = True
    import huggingface_hub.utils as hub_utils

    reset = getattr(hub_utils, "reset_sessions", None)
    if callable(reset):  # older huggingface_hub decides offline-ness when a session is made
        reset()


def downloads_forbidden() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def is_local_location(location: str) -> bool:
    """Whether a model location is a path here. Hub ids look like paths ("org/name"), so only explicit or
    existing paths count as local."""
    return location.startswith((".", "/", "~")) or Path(location).expanduser().exists()


def cached_file(repo_id: str, filename: str) -> Path | None:
    """A repo file's path in the Hugging Face cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


# -- sources ------------------------------------------------------------------------------------------------------


class WeightSource(Protocol):
    label: str

    def present(self) -> bool:
        """Whether the files are on this machine (never contacts the hub)."""

    def pull(self) -> None:
        """Fetch the files into the Hugging Face cache (or open_clip's), with a progress bar."""


@dataclass(frozen=True)
class HubRepo:
    """Files of one hub repo, as the loader reads them.

    ``patterns`` limits the download to what is loaded (None: the whole repo); ``required`` lists groups of
    alternatives of which one file each must be here; ``fallback`` patterns are fetched when the first pull
    leaves a group unmet (repos that ship only ``.bin`` weights)."""

    repo_id: str
    patterns: tuple[str, ...] | None = None
    required: tuple[tuple[str, ...], ...] = ()
    fallback: tuple[str, ...] = ()
    ignore: tuple[str, ...] = OTHER_FORMATS
    revision: str | None = None

    @property
    def label(self) -> str:
        return self.repo_id

    def local_path(self) -> Path | None:
        """The cached snapshot folder, when it holds everything ``required``."""
        folder = self._snapshot(self.patterns)
        return folder if folder is not None and not self._unmet(folder) else None

    def present(self) -> bool:
        return self.local_path() is not None

    def pull(self) -> None:
        self._download(self.patterns)
        if self.fallback and not self.present():
            self._download(self.fallback)
        folder = self._snapshot(None)
        unmet = self._unmet(folder) if folder is not None else list(self.required)
        if unmet:
            wanted = " and ".join(" or ".join(group) for group in unmet)
            raise PullError(f"{self.repo_id} was downloaded, but it has no {wanted}: is it the right repo?")

    def _snapshot(self, patterns: tuple[str, ...] | None) -> Path | None:
        from huggingface_hub import errors, snapshot_download

        try:
            return Path(
                snapshot_download(
                    self.repo_id,
                    revision=self.revision,
                    allow_patterns=list(patterns) if patterns else None,
                    ignore_patterns=list(self.ignore) or None,
                    local_files_only=True,
                )
            )
        except getattr(errors, "IncompleteSnapshotError", ()) as exc:
            # Some files of the repo listing are not here (e.g. fetched with narrower patterns): whether what
            # the loader needs is here is up to ``required``.
            return Path(exc.snapshot_path)
        except (OSError, ValueError):  # not cached, or not a valid repo id
            return None

    def _download(self, patterns: tuple[str, ...] | None) -> None:
        from huggingface_hub import snapshot_download

        fetch(
            self.repo_id,
            lambda: snapshot_download(
                self.repo_id,
                revision=self.revision,
                allow_patterns=list(patterns) if patterns else None,
                ignore_patterns=list(self.ignore) or None,
            ),
        )

    def _unmet(self, folder: Path) -> list[tuple[str, ...]]:
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        return [group for group in self.required if not any(fnmatch(f, alt) for f in files for alt in group)]


@dataclass(frozen=True)
class LocalPath:
    """A file or folder on this machine: nothing to download."""

    path: Path

    @property
    def label(self) -> str:
        return str(self.path)

    def present(self) -> bool:
        return self.path.expanduser().exists()

    def pull(self) -> None:
        if not self.present():
            raise PullError(f"{self.path} does not exist; a local path is used as it is, never downloaded")


@dataclass(frozen=True)
class NoWeights:
    """Nothing local to fetch: a remote API, or random weights."""

    label: str

    def present(self) -> bool:
        return True

    def pull(self) -> None:
        return None


@dataclass(frozen=True)
class OpenClipPretrained:
    """open_clip's pretrained weights for ``ARCH/TAG``, fetched with open_clip's own download function."""

    arch: str
    tag: str

    @property
    def label(self) -> str:
        cfg = self._cfg()
        return f"{self.arch}/{self.tag} ({_hub_file(cfg)[0] if cfg.get('hf_hub') else cfg.get('url', 'unknown')})"

    def _cfg(self) -> dict[str, Any]:
        import open_clip

        return open_clip.get_pretrained_cfg(self.arch, self.tag) or {}

    def present(self) -> bool:
        cfg = self._cfg()
        if cfg.get("hf_hub"):
            repo, filename = _hub_file(cfg)
            return any(cached_file(repo, name) for name in _open_clip_candidates(filename))
        url = cfg.get("url")
        return bool(url) and (OPEN_CLIP_URL_CACHE.expanduser() / os.path.basename(url)).is_file()

    def pull(self) -> None:
        import open_clip

        cfg = self._cfg()
        if not cfg:
            raise PullError(f"open_clip has no pretrained tag {self.tag!r} for {self.arch}")
        fetch(self.label, lambda: open_clip.download_pretrained(cfg))


@dataclass(frozen=True)
class OpenClipHub:
    """An open_clip model published as ``hf-hub:ORG/NAME``: open_clip_config.json plus its weights file."""

    repo_id: str

    @property
    def label(self) -> str:
        return self.repo_id

    def present(self) -> bool:
        return self.weights_file() is not None and cached_file(self.repo_id, OPEN_CLIP_CONFIG) is not None

    def weights_file(self) -> Path | None:
        return next((p for name in OPEN_CLIP_WEIGHTS if (p := cached_file(self.repo_id, name))), None)

    def model_cfg(self) -> dict[str, Any] | None:
        """The cached config's ``model_cfg``, or None before it is downloaded."""
        import json

        path = cached_file(self.repo_id, OPEN_CLIP_CONFIG)
        return json.loads(path.read_text()).get("model_cfg") if path else None

    def pull(self) -> None:
        from open_clip.pretrained import download_pretrained_from_hf

        fetch(self.repo_id, lambda: download_pretrained_from_hf(self.repo_id, filename=OPEN_CLIP_CONFIG))
        # The weights; open_clip tries the safetensors file first.
        fetch(self.repo_id, lambda: download_pretrained_from_hf(self.repo_id))


def repo_source(location: str) -> WeightSource:
    """A transformers (or sentence-transformers) model at ``location``: a local folder, or a hub repo."""
    if is_local_location(location):
        return LocalPath(Path(location).expanduser())
    return HubRepo(
        location,
        patterns=TRANSFORMERS_FILES,
        required=(("config.json", "config_sentence_transformers.json"), WEIGHTS_REQUIRED),
        fallback=("pytorch_model*.bin",),
    )


def text_tower_sources(model_cfg: dict[str, Any] | None) -> list[WeightSource]:
    """An open_clip model's Hugging Face text tower: its config and tokenizer come from their own repos
    (``hf_model_name``, ``hf_tokenizer_name``) even when the checkpoint holds the tower's weights."""
    text_cfg = (model_cfg or {}).get("text_cfg", {})
    names = dict.fromkeys(n for n in (text_cfg.get("hf_model_name"), text_cfg.get("hf_tokenizer_name")) if n)
    sources: list[WeightSource] = []
    for name in names:
        if is_local_location(name):
            sources.append(LocalPath(Path(name).expanduser()))
            continue
        required: list[tuple[str, ...]] = []
        if name == text_cfg.get("hf_model_name"):
            required.append(("config.json",))
        if name == text_cfg.get("hf_tokenizer_name"):
            required.append(("tokenizer.json", "*.model", "vocab.json", "vocab.txt"))
        sources.append(HubRepo(name, patterns=TOKENIZER_FILES, required=tuple(required)))
    return sources


def missing_labels(sources: Sequence[WeightSource]) -> list[str]:
    """The sources a pull would fetch that are not here. A local path that is not there is left out: no pull
    brings it, so it is the loader's own error (a wrong path) that says so."""
    return [s.label for s in sources if not isinstance(s, LocalPath) and not s.present()]


def pull_sources(resolve: Callable[[], Sequence[WeightSource]], report: Callable[[WeightSource, str], None]) -> None:
    """Fetch what ``resolve`` lists; ``report(source, status)`` says what became of each.

    Sources already here are fetched again when downloads are on, which completes an interrupted download and
    costs a listing when nothing changed. ``resolve`` runs again after each round, because some sources are only
    known once others are here (an open_clip hub model names its tokenizer repo in its config; a diffusers
    pipeline's family, and so its ControlNet and IP-Adapter defaults, is read from its model_index.json)."""
    done: set[str] = set()
    while True:
        todo = [s for s in resolve() if s.label not in done]
        if not todo:
            return
        for source in todo:
            done.add(source.label)
            if isinstance(source, NoWeights):
                report(source, "nothing to fetch")
                continue
            if isinstance(source, LocalPath):
                source.pull()  # raises when the path is not there
                report(source, "local")
                continue
            before = source.present()
            if before and downloads_forbidden():
                report(source, "present")
                continue
            source.pull()
            report(source, "up to date" if before else "downloaded")


def fetch(what: str, download: Callable[[], object]) -> None:
    """Run one download; any failure becomes a PullError naming ``what``."""
    check_online(what)
    try:
        download()
    except Exception as exc:  # hub errors are OSErrors; open_clip and diffusers add RuntimeError, ValueError, ...
        raise PullError(f"cannot download {what}: {type(exc).__name__}: {str(exc)[:300]}") from exc


def check_online(what: str) -> None:
    if downloads_forbidden():
        raise PullError(
            f"cannot download {what}: downloads are off (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE on a machine "
            "that can reach the Hugging Face Hub, or copy a filled Hugging Face cache (HF_HOME) here"
        )


def _hub_file(cfg: dict[str, Any]) -> tuple[str, str]:
    # open_clip's pretrained configs write 'org/name/filename', or 'org/name/' for its default file name.
    repo, filename = os.path.split(cfg["hf_hub"])
    return repo, filename or OPEN_CLIP_WEIGHTS[1]


def _open_clip_candidates(filename: str) -> list[str]:
    if filename == OPEN_CLIP_WEIGHTS[1]:
        return list(OPEN_CLIP_WEIGHTS)
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]
