"""``bankflow keys``: list, rotate and retire the signing keys, never showing a secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bankflow.cli import app
from bankflow.settings import get_settings
from bankflow.signing import ensure_keys


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "signing.json"
    ensure_keys(path)
    monkeypatch.setenv("BANKFLOW_SIGNING_KEYS_FILE", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def test_rotate_then_retire_a_signers_key(keys: Path) -> None:
    runner = CliRunner()
    before = json.loads(runner.invoke(app, ["keys", "list-signing", "--json"]).output)
    assert {(k["signer"], k["active"]) for k in before} == {("validator", True), ("review", True)}
    old = next(k["key_id"] for k in before if k["signer"] == "validator")

    rotated = runner.invoke(app, ["keys", "rotate-signing", "validator"])
    assert rotated.exit_code == 0, rotated.output
    after = json.loads(runner.invoke(app, ["keys", "list-signing", "--json"]).output)
    assert len(after) == 3
    assert [k["active"] for k in after if k["key_id"] == old] == [False]
    secrets = [entry["secret"] for entry in json.loads(keys.read_text())["keys"].values()]
    listing = runner.invoke(app, ["keys", "list-signing"]).output
    assert not any(secret in listing for secret in secrets)

    assert runner.invoke(app, ["keys", "retire-signing", old]).exit_code == 0
    assert old not in json.loads(keys.read_text())["keys"]
