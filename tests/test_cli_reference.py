"""docs/cli.md against the `archivist` command itself: the reference cannot drift from the code.

Every command and group has a section, every option is named in its section, every synopsis line names only real
commands and options, the exit codes the page gives by example are what the commands do, and no command's help
shows a Python type where a user expects a word (PATH..., N, URL).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from archivist.cli import app
from conftest import write_files

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
ARCHIVIST = str(Path(sys.executable).parent / "archivist")
ROOT_SECTION = "Global options"
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def commands() -> dict[str, Any]:
    """Return every command and group of the app by its path (`""` the root, `"eval runs"`), walked from Typer."""
    found: dict[str, Any] = {}

    def walk(command: Any, path: str) -> None:
        found[path] = command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return found


def sections() -> dict[str, str]:
    """Return the text under each `##` and `###` heading of docs/cli.md (down to the next heading as high)."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    heads = [(i, len(m.group(1)), m.group(2)) for i, line in enumerate(lines) if (m := re.match(r"(#+) (.+)", line))]
    found = {}
    for n, (start, level, title) in enumerate(heads):
        end = next((i for i, lv, _ in heads[n + 1 :] if lv <= level), len(lines))
        found[title] = "\n".join(lines[start + 1 : end])
    return found


def option_names(command: Any) -> list[str]:
    """Return every spelling of every option of a command (`--k`, `-k`, `--judge`, `--no-judge`)."""
    return [o for p in command.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)]


def test_every_command_and_group_has_a_section_naming_each_of_its_options() -> None:
    text = sections()
    missing = []
    for path, command in commands().items():
        section = text.get(path or ROOT_SECTION)
        if section is None:
            missing.append(f"no section `## {path}` (or `### {path}`)")
            continue
        named = set(OPTION.findall(section))
        missing += [f"{path or 'archivist'}: {o}" for o in option_names(command) if o not in named]
        for p in command.params:
            if p.param_type_name == "argument" and p.metavar not in section:
                missing.append(f"{path}: argument {p.metavar}")
    assert not missing, "docs/cli.md is missing:\n" + "\n".join(missing)


def synopsis_lines() -> list[str]:
    """Return the `archivist …` lines of the page's code blocks, continuation lines joined on."""
    found: list[str] = []
    in_block = False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and line.startswith("archivist "):
            found.append(line)
        elif in_block and found and line.startswith(" ") and line.strip().startswith("["):
            found[-1] += " " + line.strip()
    return found


def test_every_synopsis_names_a_real_command_and_its_real_options() -> None:
    known = commands()
    wrong = []
    lines = synopsis_lines()
    assert len(lines) > 20
    for line in lines:
        words = line.split("#")[0].split()[1:]
        path = ""
        for word in words:
            if f"{path} {word}".strip() in known:
                path = f"{path} {word}".strip()
            else:
                break
        options = set(option_names(known[path]))
        wrong += [f"{line!r}: {o}" for o in OPTION.findall(line) if o not in options and o != "--help"]
    assert not wrong, "options docs/cli.md names that the command does not have:\n" + "\n".join(wrong)


def test_no_help_shows_a_python_type() -> None:
    shown = []
    for path in commands():
        proc = subprocess.run(
            [ARCHIVIST, *path.split(), "--help"],
            env={**os.environ, "COLUMNS": "100"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Usage: archivist" in proc.stdout
        types = re.findall(r"<[\w\[\], |.]+>|\w+\]\]?>|\{\w+\}|list\[\w+\]", proc.stdout)
        shown += [f"archivist {path} --help: {t}" for t in types]
    assert not shown, "\n".join(shown)


def test_help_names_values_the_way_users_write_them() -> None:
    def usage_and_options(*args: str) -> str:
        return subprocess.run([ARCHIVIST, *args, "--help"], capture_output=True, text=True, timeout=60).stdout

    ingest = usage_and_options("ingest")
    assert "archivist ingest [OPTIONS] PATH..." in ingest and "--store URL" in ingest
    search = usage_and_options("search")
    assert all(s in search for s in ("QUERY", "-k, --k N", "-f, --filter KEY=VALUE", "--mode MODE"))
    assert "--k N" in usage_and_options("ask") and "--html FILE" in usage_and_options("eval", "report")


def exit_examples() -> list[tuple[str, int]]:
    """Return the (command, exit code) rows of the page's "Exit codes by example" table."""
    section = sections()["Exit codes by example"]
    rows = re.findall(r"^\| `(archivist [^`]+)` \| (\d+) \|$", section, flags=re.M)
    return [(command, int(code)) for command, code in rows]


@pytest.fixture(scope="module")
def store_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder whose default store holds one ingested document (and no LLM configuration)."""
    root = tmp_path_factory.mktemp("reference")
    write_files(root / "docs", {"keys.md": "# API keys\n\nRotate a key by creating a second one.\n"})
    assert cli(root, "ingest", "docs").returncode == 0
    return root


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `archivist` command in `cwd` with no ARCHIVIST_ setting from this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVIST_")}
    return subprocess.run([ARCHIVIST, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_exit_codes_the_page_states_are_what_the_commands_do(store_folder: Path) -> None:
    examples = exit_examples()
    assert len(examples) >= 10
    commands_named = {" ".join(c.split()[1:3]) for c, _ in examples}
    assert {"eval compare", "eval report", "eval gate", "docs show", "llm ping"} <= commands_named
    for command, code in examples:
        proc = cli(store_folder, *shlex.split(command)[1:])
        assert proc.returncode == code, (command, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
