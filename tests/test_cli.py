"""stage-proxy's command line: bad configuration is one clear line and a non-zero exit."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.app.server import running
from proxy.app.settings import OPTIONS, EmbeddedUpstream, Option, SettingsError, load_settings, markdown_table
from proxy.shared.secrets import Secret
from tests.support.ports import free_port
from tests.support.proxies import REPO


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin", **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stage-proxy: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_help_lists_every_option() -> None:
    """--help documents the contract's options."""
    result = run_cli("--help")
    assert result.returncode == 0
    for option in ("--upstream", "--listen", "--admin-listen", "--redis-url", "--config", "--state-file",
                   "--ops-token-file", "--demo"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [((), "--upstream URL (or STAGE_UPSTREAM_URL) is required"),
     (("--upstream", "ftp://x"), "--upstream: expected a http/https URL"),
     (("--upstream", "http://x:99999"), "bad port"),
     (("--upstream", "http://x", "--listen", "nope"), "--listen: expected HOST:PORT"),
     (("--upstream", "http://x", "--redis-url", "mysql://db"), "--redis-url"),
     (("--upstream", "http://x", "--config", "/nonexistent/c.toml"), "cannot read '/nonexistent/c.toml'"),
     (("--upstream", "http://x", "--state-file", "/nonexistent/dir/s.json"), "does not exist"),
     (("--upstream", "http://x", "--ops-token-file", "/nonexistent/t"), "--ops-token-file"),
     (("--upstream", "http://x", "--max-body-bytes", "-5"), "must be positive"),
     (("--upstream", "http://x", "--max-body-bytes", "0"), "must be positive"),
     (("--upstream", "http://x", "--refresh-ms", "0"), "must be positive"),
     (("--upstream", "http://x", "--bogus"), "unrecognized arguments")],
)
def test_bad_configuration(args: tuple[str, ...], fragment: str) -> None:
    """Each bad option exits 2 with one line naming it."""
    assert_one_line_error(run_cli(*args), 2, fragment)


def test_bad_catalog_file(tmp_path: Path) -> None:
    """A catalog that does not parse exits 2 naming the file and the problem."""
    config = tmp_path / "bad.toml"
    config.write_text("[stages\ncanonical = 1\n")
    assert_one_line_error(run_cli("--upstream", "http://x", "--config", str(config)), 2, "not valid TOML")


@pytest.mark.parametrize(("text", "fragment"), [
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nest too deeply"),
    ("# padding\n" * 500_000, "at most 4194304 are read"),
    ("\xff\xfe", "cannot read"),
])
def test_hostile_catalog_files_are_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    """A catalog nested 5 000 deep, a huge one, a non-UTF-8 one: exit 2, one line, never a traceback."""
    config = tmp_path / "hostile.toml"
    config.write_bytes(text.encode("latin-1"))
    assert_one_line_error(run_cli("--upstream", "http://x", "--config", str(config)), 2, fragment)


def test_env_is_read(tmp_path: Path) -> None:
    """Options fall back to their environment variables."""
    settings = load_settings([], {"STAGE_UPSTREAM_URL": "http://up:81", "STAGE_LISTEN": "127.0.0.1:1",
                                  "STAGE_OPS_TOKEN": "tok", "STAGE_REDIS_URL": "redis://h:1/0"})
    assert settings.upstream_url == "http://up:81" and settings.listen.port == 1
    assert settings.ops_token is not None and settings.ops_token.matches("tok")
    with pytest.raises(SettingsError, match="STAGE_MAX_BODY_BYTES"):
        load_settings(["--upstream", "http://x"], {"STAGE_MAX_BODY_BYTES": "lots"})


def test_secrets_never_print() -> None:
    """repr/str of settings and secrets mask the token and the Redis URL (which may hold a password)."""
    settings = load_settings(["--upstream", "http://x", "--redis-url", "redis://:hunter2@h:1/0"],
                             {"STAGE_OPS_TOKEN": "tok-abcdef"})
    assert "tok-abcdef" not in repr(settings) and "hunter2" not in repr(settings)
    assert str(Secret("tok-abcdef")) == "Secret('**********')"


def test_port_in_use_exits_1() -> None:
    """A listener port already taken exits 1 with one line naming it."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--upstream", "http://127.0.0.1:1", "--listen", f"127.0.0.1:{port}",
                         "--admin-listen", f"127.0.0.1:{free_port()}")
    assert_one_line_error(result, 1, f"cannot listen on --listen 127.0.0.1:{port}")


def test_readme_option_table_is_the_settings_table() -> None:
    """The README's option table is exactly what proxy/app/settings.py declares (one table, no drift)."""
    readme = (REPO / "README.md").read_text()
    begin = readme.index("\n", readme.index("<!-- options:begin")) + 1
    assert readme[begin:readme.index("<!-- options:end -->")] == markdown_table() + "\n", "run scripts/sync-docs"


FILE_OPTIONS = {"config_path", "ops_token_file"}  # read a file: covered by test_bad_configuration and below
SAMPLES: dict[str, tuple[str, str]] = {
    "upstream_url": ("http://env:1", "http://flag:2"), "listen": ("127.0.0.1:1", "127.0.0.1:2"),
    "admin_listen": ("127.0.0.1:3", "127.0.0.1:4"), "redis_url": ("redis://env:1/0", "redis://flag:2/0"),
    "state_file": ("/tmp/env.json", "/tmp/flag.json"), "upstream_health_path": ("/env", "/flag"),
    "log_level": ("debug", "ERROR"), "workers": ("2", "3"), "request_id_header": ("X-Env", "X-Flag"),
    "redis_prefix": ("env:", "flag:"), "trusted_proxies": ("10.0.0.0/8", "192.0.2.0/24,::1"),
    "consumer_header": ("X-Env", "X-Flag")}


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.flag and not o.switch and o.name not in FILE_OPTIONS],
                         ids=lambda o: o.flag)
def test_every_option_has_its_variable_and_the_flag_wins(option: Option) -> None:
    """Each option is read from its variable, and the flag beats the variable, with the same parser."""
    env_value, flag_value = SAMPLES.get(option.name, ("7", "9"))
    assert option.env is not None and option.flag is not None
    base = {"STAGE_UPSTREAM_URL": "http://up:1", "STAGE_REDIS_URL": "redis://r:1/0",
            "STAGE_TRUSTED_PROXIES": "127.0.0.1"}  # --consumer-header needs it
    from_env = load_settings([], {**base, option.env: env_value})
    from_flag = load_settings([option.flag, flag_value], {**base, option.env: env_value})
    assert getattr(from_env, option.name) == option.parse(env_value) != option.parse(flag_value)
    assert getattr(from_flag, option.name) == option.parse(flag_value)


def test_token_file_wins_and_demo_switch_reads_its_variable(tmp_path: Path) -> None:
    """--ops-token-file beats STAGE_OPS_TOKEN; STAGE_DEMO=true is --demo."""
    token = tmp_path / "token"
    token.write_text("from-file\n")
    settings = load_settings(["--ops-token-file", str(token)], {"STAGE_OPS_TOKEN": "from-env", "STAGE_DEMO": "true"})
    assert settings.demo and settings.ops_token is not None and settings.ops_token.matches("from-file")
    assert settings.ops_token_shell == f"$(cat {token})"
    with pytest.raises(SettingsError, match="STAGE_DEMO: expected true or false"):
        load_settings([], {"STAGE_DEMO": "maybe"})


async def test_the_demo_upstream_is_a_choice_not_a_missing_value() -> None:
    """--demo without --upstream is the embedded upstream in the settings themselves (never None filled in later):
    running() starts it, reports its address beside the settings it was given, and requests reach it."""
    settings = load_settings(["--demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], {})
    assert isinstance(settings.upstream_url, EmbeddedUpstream)
    assert load_settings(["--demo", "--upstream", "http://up:1"], {}).upstream_url == "http://up:1"
    async with running(settings) as run, aiohttp.ClientSession() as http:
        assert run.settings is settings and run.upstream_url.startswith("http://127.0.0.1:")
        async with http.post(f"{run.url}/api/v1/deals", json={"name": "Acme", "stage": "won"}) as response:
            assert response.status == 201, await response.text()


@pytest.mark.parametrize(("argv", "environ", "secret"), [
    (["--upstream", "http://x", "--redis-url", "redis://:hunter2@redis:notaport/0"], {}, "hunter2"),
    (["--upstream", "http://u:pa55word@x:99999"], {}, "pa55word"),
    ([], {"STAGE_REDIS_URL": "mysql://root:topsecret@db/0", "STAGE_UPSTREAM_URL": "http://x"}, "topsecret"),
])
def test_errors_never_echo_credentials(argv: list[str], environ: dict[str, str], secret: str) -> None:
    """A bad URL holding a password is named in the error with the password masked."""
    with pytest.raises(SettingsError) as caught:
        load_settings(argv, environ)
    assert secret not in str(caught.value) and "**********" in str(caught.value)
