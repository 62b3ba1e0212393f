"""The settings registry: precedence, errors that name the key, docs that list every key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from heaper_trio.errors import StartupError
from heaper_trio.settings import SETTINGS, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_come_from_the_registry() -> None:
    s = load_settings(environ={})
    for setting in SETTINGS:
        assert getattr(s, setting.name) == setting.default
    assert {f.name for f in dataclasses.fields(Settings)} == {x.name for x in SETTINGS}
    assert s.engine == "sqlite"


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "heaper.toml"
    cfg.write_text('port = 9001\nname = "From file"\nauto_approve = true\n')
    s = load_settings(config_path=str(cfg), environ={"HEAPER_PORT": "9002"})
    assert (s.port, s.name, s.auto_approve) == (9002, "From file", True)
    s = load_settings(
        config_path=str(cfg), environ={"HEAPER_PORT": "9002"}, overrides={"port": 9003}
    )
    assert s.port == 9003
    # HEAPER_CONFIG names the file when no flag does; a [server] table is accepted too.
    cfg.write_text("[server]\nport = 9004\n")
    assert load_settings(environ={"HEAPER_CONFIG": str(cfg)}).port == 9004


@pytest.mark.parametrize(
    "content,needle",
    [
        ("prot = 1\n", "'prot'"),
        ('port = "eighty"\n', "port"),
        ("port = 70000\n", "port"),
        ("auth_rate_limit = 0\n", "auth_rate_limit"),
        ('sqlite_synchronous = "OFF"\n', "sqlite_synchronous"),
        ('database_url = "mysql://x"\n', "database_url"),
        ("auto_approve = 3\n", "auto_approve"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    with pytest.raises(StartupError, match=re.escape(needle)):
        load_settings(config_path=str(cfg), environ={})


def test_bad_env_names_the_variable() -> None:
    with pytest.raises(StartupError, match="HEAPER_PORT"):
        load_settings(environ={"HEAPER_PORT": "x"})
    with pytest.raises(StartupError, match="HEAPER_AUTO_APPROVE"):
        load_settings(environ={"HEAPER_AUTO_APPROVE": "maybe"})
    assert load_settings(environ={"HEAPER_AUTO_APPROVE": "yes"}).auto_approve is True


def test_missing_config_file() -> None:
    with pytest.raises(StartupError, match="does not exist"):
        load_settings(config_path="/nonexistent/heaper.toml", environ={})


def test_every_setting_is_documented_and_in_the_example() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / "config" / "heaper.example.toml").read_text()
    for s in SETTINGS:
        assert f"`{s.name}`" in doc, f"{s.name} missing from docs/configuration.md"
        assert s.env in doc, f"{s.env} missing from docs/configuration.md"
        assert re.search(rf"^#? ?{s.name} = ", example, re.M), f"{s.name} missing from example"


def test_example_config_loads(tmp_path: Path) -> None:
    # Uncommented, the example gives the defaults back (it documents them, it changes nothing).
    text = (ROOT / "config" / "heaper.example.toml").read_text()
    uncommented = re.sub(r"^# ?(\w+ = )", r"\1", text, flags=re.M)
    cfg = tmp_path / "example.toml"
    cfg.write_text(uncommented)
    assert load_settings(config_path=str(cfg), environ={}) == load_settings(environ={})
