"""`recpipe registry promote`: environments from the config file, refusals, who and why."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from recpipe.cli import main
from recpipe.cli.promote import add_promote_parser
from recpipe.core.config import ConfigError
from recpipe.registry import promote as pr
from recpipe.registry import store


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    registry = p.add_subparsers(dest="command").add_parser("registry")
    add_promote_parser(registry.add_subparsers(dest="registry_command"))
    return p


def _run(argv: list[str]) -> int:
    a = _parser().parse_args(["registry", "promote", *argv])
    return int(a.func(a))


def _setup(tmp_path: Path, hours: float) -> tuple[Path, str, str, str]:
    staging, prod = tmp_path / "staging", tmp_path / "prod"
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name": "shop",
                "environments": {
                    "staging": {"run": {"registry_uri": str(staging)}},
                    "prod": {
                        "run": {"registry_uri": str(prod)},
                        "promotion": {"source": "staging", "min_serving_hours": hours},
                    },
                    "qa": {},
                },
            }
        )
    )
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.pt").write_bytes(b"weights" * 100)
    blessing = {"blessing": {"blessed": True}}
    serving = store.push(bundle, str(staging), "shop", blessing).version
    store.set_production(str(staging), "shop", serving, "rolled out", action="promote")
    (bundle / "model.pt").write_bytes(b"other" * 100)
    never = store.push(bundle, str(staging), "shop", blessing).version
    return config, str(prod), serving, never


def test_promote_from_the_config_environments_records_the_actor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, prod, serving, never = _setup(tmp_path, hours=0)
    monkeypatch.setenv("GITHUB_ACTOR", "release-bot")
    monkeypatch.delenv("RECPIPE_ACTOR", raising=False)
    args = ["--from", "staging", "--to", "prod", "--config", str(config), "--reason", "r1"]
    assert _run([serving, *args]) == 0
    out = capsys.readouterr().out
    assert f"shop/{serving}: staging -> prod (copied, every sha256 verified)" in out
    event = store.production(prod, "shop")["history"][-1]  # type: ignore[index]
    assert event["details"]["actor"] == "release-bot" and event["reason"] == "r1"
    assert _run([serving, *args, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["copied"] is False and again["recorded"] is False

    with pytest.raises(pr.PromotionError, match="never served as production in staging"):
        _run([never, *args])
    assert _run([never, *args, "--force", "--actor", "alice"]) == 0
    assert "FORCED past: it never served" in capsys.readouterr().out
    event = store.production(prod, "shop")["history"][-1]  # type: ignore[index]
    assert event["details"]["actor"] == "alice" and event["details"]["forced"] is True


def test_promote_refuses_bad_requests_before_touching_a_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, prod, serving, _ = _setup(tmp_path, hours=24)
    base = ["--config", str(config), "--reason", "r", "--actor", "ci"]
    with pytest.raises(pr.PromotionError, match=r"fewer than the 24\.0 h"):
        _run([serving, "--from", "staging", "--to", "prod", *base])
    with pytest.raises(ConfigError, match=r"no environment 'dev'"):
        _run([serving, "--from", "dev", "--to", "prod", *base])
    with pytest.raises(ConfigError, match=r"'qa' sets no run.registry_uri"):
        _run([serving, "--from", "qa", "--to", "prod", *base])
    for name in ("RECPIPE_ACTOR", "GITHUB_ACTOR", "USER"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="who is promoting"):
        _run(
            [serving, "--from", "staging", "--to", "prod", "--config", str(config), "--reason", "r"]
        )
    with pytest.raises(SystemExit):  # --reason is required
        _parser().parse_args(["registry", "promote", serving, "--from", "staging", "--to", "prod"])
    assert not Path(prod).exists()


def test_recpipe_registry_promote_is_wired_into_the_cli(tmp_path: Path) -> None:
    """Through `recpipe` itself: exit 0, and a refusal is one line and exit 1."""
    config, _, serving, never = _setup(tmp_path, hours=0)
    args = ["--from", "staging", "--to", "prod", "--config", str(config), "--actor", "ci"]
    assert main(["registry", "promote", serving, *args, "--reason", "ok"]) == 0
    assert main(["registry", "promote", never, *args, "--reason", "try"]) == 1
