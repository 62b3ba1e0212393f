"""The settings registry: precedence, errors that name the key, docs that list every key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from heaper_trio.errors import StartupError
from heaper_trio.settings import SETTINGS, Settings, load_settings, unknown_env_warnings

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


@pytest.mark.parametrize("word", ["true", "TRUE", "Yes", "on", "1", " yes "])
def test_one_boolean_rule_true(tmp_path: Path, word: str) -> None:
    """The same words mean true in the environment, a TOML string and a flag."""
    assert load_settings(environ={"HEAPER_AUTO_APPROVE": word}).auto_approve is True
    assert load_settings(environ={}, overrides={"auto_approve": word}).auto_approve is True
    cfg = tmp_path / "b.toml"
    cfg.write_text(f'auto_approve = "{word}"\n')
    assert load_settings(config_path=str(cfg), environ={}).auto_approve is True


@pytest.mark.parametrize("word", ["false", "False", "NO", "off", "0"])
def test_one_boolean_rule_false(word: str) -> None:
    env = {"HEAPER_AUTO_APPROVE": word, "HEAPER_ACCESS_LOG": word}
    s = load_settings(environ=env, overrides={"auto_approve": None})
    assert (s.auto_approve, s.access_log) == (False, False)
    assert load_settings(environ={}, overrides={"access_log": word}).access_log is False


@pytest.mark.parametrize(
    "toml,value", [("true", True), ("false", False), ("1", True), ("0", False)]
)
def test_toml_booleans_and_integers_0_1(tmp_path: Path, toml: str, value: bool) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text(f"auto_approve = {toml}\n")
    assert load_settings(config_path=str(cfg), environ={}).auto_approve is value


@pytest.mark.parametrize("raw", ["2", "maybe", "", "tru"])
def test_other_booleans_are_refused_naming_the_key(raw: str) -> None:
    with pytest.raises(StartupError, match="HEAPER_AUTO_APPROVE: expected bool"):
        load_settings(environ={"HEAPER_AUTO_APPROVE": raw})
    with pytest.raises(StartupError, match="command line: auto_approve"):
        load_settings(environ={}, overrides={"auto_approve": raw})


def test_toml_numbers_other_than_0_1_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    for bad in ("2", "1.0", "-1"):
        cfg.write_text(f"auto_approve = {bad}\n")
        with pytest.raises(StartupError, match="auto_approve: expected bool"):
            load_settings(config_path=str(cfg), environ={})


def test_choices_match_in_any_case() -> None:
    s = load_settings(environ={"HEAPER_LOG_LEVEL": "DEBUG", "HEAPER_SQLITE_SYNCHRONOUS": "normal"})
    assert (s.log_level, s.sqlite_synchronous) == ("debug", "NORMAL")  # as the choices spell it
    assert load_settings(environ={}, overrides={"log_level": "Warning"}).log_level == "warning"
    with pytest.raises(StartupError, match="HEAPER_LOG_LEVEL: must be one of"):
        load_settings(environ={"HEAPER_LOG_LEVEL": "verbose"})


def test_unknown_heaper_variables_are_named_with_the_closest_known_one() -> None:
    env = {
        "HEAPER_PROT": "1",
        "HEAPER_LOGLEVEL": "debug",
        "HEAPER_QQQQQQQQQQ": "x",
        "HEAPER_PORT": "1",  # known: no warning
        "HEAPER_CONFIG": "x.toml",  # read by name, not a setting
        "HEAPER_TEST_DATABASE_URL": "postgresql://x",  # the test suite's own
        "OTHER_PROT": "1",
    }
    assert unknown_env_warnings(env) == [
        "unknown environment variable HEAPER_LOGLEVEL is ignored; did you mean HEAPER_LOG_LEVEL?",
        "unknown environment variable HEAPER_PROT is ignored; did you mean HEAPER_PORT?",
        "unknown environment variable HEAPER_QQQQQQQQQQ is ignored (see docs/configuration.md)",
    ]
    assert unknown_env_warnings({s.env: "" for s in SETTINGS}) == []


def test_data_dir_naming_a_file_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StartupError, match=f"data_dir: {blocker} is a file, not a directory"):
        load_settings(environ={}, overrides={"data_dir": str(blocker)})
    with pytest.raises(StartupError, match=f"cannot be a directory: {blocker} is a file"):
        load_settings(environ={"HEAPER_DATA_DIR": str(blocker / "sub" / "data")})
    fine = load_settings(environ={}, overrides={"data_dir": str(tmp_path / "new" / "data")})
    assert fine.data_path == tmp_path / "new" / "data"  # not there yet: made at start
