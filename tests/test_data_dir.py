"""Data dirs are portable: what index.json records opens from any working directory, and after a move."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from conftest import make_catalog
from typer.testing import CliRunner

from indexer import IndexManifest
from ui.cli import app


@pytest.fixture
def project(tmp_path, tiny_clip_spec, monkeypatch):
    """A shop's folder as `make demo` lays it out: a model checkpoint, a catalog and an index, side by side,
    indexed with paths relative to the folder the command ran in."""
    root = tmp_path / "shop"
    (root / "models").mkdir(parents=True)
    arch, checkpoint = tiny_clip_spec.removeprefix("openclip:").split("/", 1)
    shutil.copy(checkpoint, root / "models" / "tiny.pt")
    make_catalog(root / "catalog", n=24)
    monkeypatch.chdir(root)
    spec = f"openclip:{arch}/models/tiny.pt"
    result = CliRunner().invoke(app, ["index", "catalog/catalog.jsonl", "--data-dir", "index", "--model", spec, "-q"])
    assert result.exit_code == 0, result.output
    return root


def search(data_dir: Path, text: str = "red dress") -> list[dict]:
    # As typed: "red dress" read as filters would leave one photo of a red dress in this catalog.
    args = ["search", text, "--literal", "--data-dir", str(data_dir), "--json", "--k", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_manifest_records_paths_relative_to_the_data_dir(project):
    raw = json.loads((project / "index" / "index.json").read_text())
    assert raw["store"] == "edge:./store"
    assert raw["clip_model"].endswith("/../models/tiny.pt")
    assert raw["text_model"] == "st:all-MiniLM-L6-v2"  # a name, not a path here: left as it is
    assert raw["last_run"]["catalog"] == "../catalog/catalog.jsonl"
    assert raw["last_run"]["errors_path"] == "./errors.jsonl"


def test_a_moved_data_dir_opens_from_another_working_directory(project, tmp_path, monkeypatch):
    before = search(project / "index")
    moved = tmp_path / "elsewhere" / "shop-copy"
    moved.parent.mkdir()
    shutil.move(project, moved)
    monkeypatch.chdir(tmp_path)
    after = search(moved / "index")
    assert [h["id"] for h in after] == [h["id"] for h in before] and len(after) == 3
    manifest = IndexManifest.load(moved / "index")
    assert manifest.store == f"edge:{moved / 'index' / 'store'}"
    assert Path(manifest.clip_model.split("/", 1)[1]) == moved / "models" / "tiny.pt"


def test_a_data_dir_far_from_its_model_records_the_absolute_path(project, tmp_path, monkeypatch, tiny_clip_spec):
    far = tmp_path / "a" / "b" / "index"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["index", str(project / "catalog" / "catalog.jsonl"), "--data-dir", str(far), "--model", tiny_clip_spec]
    )
    assert result.exit_code == 0, result.output
    raw = json.loads((far / "index.json").read_text())
    assert raw["clip_model"] == tiny_clip_spec  # the checkpoint is outside the data dir's parent: absolute
    assert raw["store"] == "edge:./store"


def test_a_cwd_relative_manifest_still_opens_from_where_it_was_made_and_says_how_to_fix_it(
    project, tmp_path, monkeypatch, caplog
):
    path = project / "index" / "index.json"
    raw = json.loads(path.read_text())
    arch = raw["clip_model"].removeprefix("openclip:").split("/", 1)[0]
    # What earlier versions wrote: paths relative to the working directory of `lookalike index`.
    raw.update(store="edge:index/store", clip_model=f"openclip:{arch}/models/tiny.pt")
    path.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING, logger="indexer.manifest"):
        assert len(search(project / "index")) == 3
    warning = next(r.getMessage() for r in caplog.records if "relative to the working directory" in r.getMessage())
    assert '"store": "edge:./store"' in warning and "../models/tiny.pt" in warning
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["search", "red dress", "--data-dir", str(project / "index")])
    assert result.exit_code == 2 and "does not exist" in result.output
