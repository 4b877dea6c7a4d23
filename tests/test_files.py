"""Files written whole or not at all."""

from __future__ import annotations

import os

import pytest

from indexer.files import atomic_write_text


def test_a_write_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "state.json"
    atomic_write_text(path, '{"n": 1}')
    assert path.read_text(encoding="utf-8") == '{"n": 1}'

    def crash(*_args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, '{"n": 2}')
    assert path.read_text(encoding="utf-8") == '{"n": 1}'
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]
    monkeypatch.undo()
    atomic_write_text(path, "é")  # written as UTF-8 whatever the locale
    assert path.read_bytes() == "é".encode()
