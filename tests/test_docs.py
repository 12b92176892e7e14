"""Docs that cannot drift from the code: figures name what produced them, defaults and variables are the code's."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

from archivist.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"])
#: A table whose header names one of these holds measured figures.
_FIGURE_HEADER = re.compile(
    r"ndcg|recall|mrr|map@|precision|hit.rate|req/s|\bp\d\d\b|\bms\b|latency|faithful|\bf1\b|accuracy|/s\b", re.I
)
#: ... and so does one with a cell that is only a duration ("26 ms", "**4,181 ms**").
_DURATION_CELL = re.compile(r"^\**[\d,.]+\**\s*(ms|s)$")
#: A command that produced figures: in backticks or at the start of a line of a code block.
_COMMAND = re.compile(r"(`|^)\s*(?:[A-Z_]+=\S+\s+)*(?:archivist|python|\.venv/bin/\w+|make|time)\s", re.M)
#: A stored eval run, as `archivist eval runs` lists it.
_RUN_ID = re.compile(r"\bruns?:? [0-9a-f]{12}\b")


@dataclass
class Table:
    path: Path
    start: int  # 0-based index of the header line
    end: int  # one past the last row
    lines: list[str]

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.start + 1}"


def _tables(path: Path) -> list[Table]:
    """Return the Markdown tables of a file (a header row, a separator row, then rows)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.fullmatch(r"\|[\s:|-]+\|", lines[i + 1].strip()):
            start = i
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            found.append(Table(path, start, i, lines))
        else:
            i += 1
    return found


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _holds_figures(table: Table) -> bool:
    rows = table.lines[table.start : table.end]
    return bool(_FIGURE_HEADER.search(rows[0])) or any(
        _DURATION_CELL.match(cell) for row in rows[2:] for cell in _cells(row)
    )


def _figure_tables() -> list[Table]:
    return [t for path in DOCS for t in _tables(path) if _holds_figures(t)]


def test_the_figure_table_finder_sees_the_tables_it_must_check() -> None:
    where = {t.where() for t in _figure_tables()}
    # The headline retrieval figures, a latency table and a throughput table: if these are not found, the check
    # below checks nothing.
    assert any(w.startswith("docs/evaluation.md") for w in where)
    assert any(w.startswith("docs/storage.md") for w in where) and any(w.startswith("docs/api.md") for w in where)
    config = {t.where() for t in _tables(ROOT / "docs" / "configuration.md")}
    assert config and not config & where  # settings tables (defaults, descriptions) are not figures


def _blocks(lines: list[str], index: int, step: int, count: int) -> list[str]:
    """Return the lines of the `count` text blocks (paragraphs, code blocks) next to lines[index], going by `step`,
    up to a heading: what a reader takes to belong to a table."""
    taken: list[str] = []
    i = index
    for _ in range(count):
        while 0 <= i < len(lines) and not lines[i].strip():
            i += step
        fenced = False
        while 0 <= i < len(lines) and not lines[i].startswith("#") and (fenced or lines[i].strip()):
            if lines[i].lstrip().startswith("```"):
                fenced = not fenced
            taken.append(lines[i])
            i += step
    return taken


def _provenance(table: Table) -> str:
    """Return the text that may name the command or run of a table's figures: its rows and the blocks around it."""
    rows = table.lines[table.start : table.end]
    before = _blocks(table.lines, table.start - 1, -1, 2)
    after = _blocks(table.lines, table.end, 1, 1)
    return "\n".join([*before[::-1], *rows, *after])


@pytest.mark.parametrize("table", _figure_tables(), ids=Table.where)
def test_every_table_of_figures_names_the_command_or_run_that_produced_it(table: Table) -> None:
    near = _provenance(table)
    assert _COMMAND.search(near) or _RUN_ID.search(near), (
        f"{table.where()}: a table of figures needs the command that produced it, or a run id, in the paragraph or "
        "code block just before or after it"
    )


_FUSIONS = {"learned": r"learned", "zscore": r"z-?score", "rrf": r"rrf|reciprocal[ -]rank"}
_FUSION = "|".join(f"(?P<{name}>{pattern})" for name, pattern in _FUSIONS.items())
#: "z-score fusion (default)", "learned fusion, the default", "RRF by default"; and "the default, learned fusion".
_DEFAULT_CLAIMS = [
    re.compile(rf"(?:{_FUSION})(?:\s+fusion)?(?:\s+model)?\s*(?:\(|,\s*|\s+is\s+)?(?:the\s+)?(?:by\s+)?default", re.I),
    re.compile(rf"\bdefault(?:\s+fusion)?(?:\s+is|:|,)?\s+(?:the\s+)?(?:{_FUSION})", re.I),
]
#: Words that make a claim about a past default, not the current one.
_PAST = re.compile(r"previous|former|default then|until|before", re.I)


def _default_claims() -> list[tuple[str, str, str]]:
    """Return (where, fusion, words) for every place a doc says which fusion is the default."""
    claims = []
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for pattern in _DEFAULT_CLAIMS:
                for match in pattern.finditer(line):
                    if _PAST.search(line[max(0, match.start() - 30) : match.end() + 15]):
                        continue
                    fusion = next(name for name in _FUSIONS if match.group(name))
                    claims.append((f"{path.relative_to(ROOT)}:{number}", fusion, match.group(0)))
    return claims


def test_no_doc_names_a_fusion_default_other_than_the_settings() -> None:
    default = Settings.model_fields["fusion"].default
    claims = _default_claims()
    assert any(fusion == default for _, fusion, _ in claims)  # the check finds the docs' own statement of it
    wrong = [claim for claim in claims if claim[1] != default]
    assert not wrong, f"the default fusion is {default!r} (archivist.config.Settings), but the docs say: {wrong}"


def _settings_variables() -> dict[str, str]:
    """Return {ARCHIVIST_NAME: field} for every setting read from the environment."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper(): name for name in Settings.model_fields}


def _variables_code_reads() -> set[str]:
    """Return the ARCHIVIST_* names the package, the benchmarks and the tests read themselves (outside Settings)."""
    sources = [
        *(ROOT / "src" / "archivist").rglob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
        *(ROOT / "tests").glob("*.py"),
    ]
    return {
        m.group(1)
        for path in sources
        for m in re.finditer(r"[\"'](ARCHIVIST_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text(encoding="utf-8"))
    }


def test_every_archivist_variable_the_docs_mention_exists() -> None:
    known = _settings_variables().keys() | _variables_code_reads()
    unknown = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in DOCS
        for name in set(re.findall(r"\bARCHIVIST_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")))
        if name not in known
    )
    assert not unknown, f"variables no setting or code reads: {unknown}"


def test_every_setting_is_documented_in_configuration_md() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = []
    for variable, name in _settings_variables().items():
        annotation = Settings.model_fields[name].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            # A nested table of archivist.toml (e.g. [llm]), not one environment variable.
            documented = f"[{name}." in text or f"[[{name}." in text
        else:
            documented = f"`{variable}`" in text and f"`{name}`" in text
        if not documented:
            missing.append(variable)
    assert not missing, f"settings missing from docs/configuration.md: {missing}"
