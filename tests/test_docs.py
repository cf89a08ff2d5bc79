"""The README and docs/ cannot rot: every command in them runs here or says why it cannot,
every relative link and anchor resolves, and every generated block matches its file.

Convention (docs/tests.md): the line before a fenced ``bash`` or ``sql`` block (blank lines and a
``<!-- generated: ... -->`` line skipped) is ``<!-- runnable -->`` or
``<!-- not-runnable: reason -->``. Runnable ``bash`` blocks of one page run in order as one
script, in a fresh folder with a fresh CXR_HOME and PREFECT_HOME, against a real Prefect server.
Runnable ``sql`` blocks run on a freshly migrated database (SQLite, and PostgreSQL when
configured), inside a transaction that is rolled back.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT, VENV_BIN

from bench import doc_blocks

PAGES = doc_blocks.doc_files()
#: Pages other branches of this round add (configuration, threat model, PACS): a link to one of
#: them is accepted while it is absent; once present, it is checked like any other.
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console", "sql"}
MARKER = re.compile(r"^\s*<!-- (runnable|not-runnable: (?P<reason>.*?)) -->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass(frozen=True)
class CodeBlock:
    page: Path
    line: int
    lang: str
    code: str
    marker: str | None  # "runnable", "not-runnable: ..." or None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.marker == "runnable"


def code_blocks(page: Path) -> list[CodeBlock]:
    """Every fenced block of a Markdown page, with the marker on the line before it."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, start = opening["indent"], i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[start + 1 : j])
        found.append(CodeBlock(page, start + 1, opening["lang"], code + "\n", _marker_before(lines, start)))
        i = j + 1
    return found


def _marker_before(lines: list[str], index: int) -> str | None:
    k = index - 1
    while k >= 0 and (not lines[k].strip() or lines[k].lstrip().startswith("<!-- generated:")):
        k -= 1
    match = MARKER.match(lines[k]) if k >= 0 else None
    return match[1] if match else None


ALL_BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def test_the_pages_exist_and_the_readme_is_short():
    names = {str(p.relative_to(REPO_ROOT)) for p in PAGES}
    for topic in ("install", "cli", "data", "models", "evaluation", "deployments", "api", "scaling", "sql",
                  "benchmarks", "architecture", "tests", "index"):  # fmt: skip
        assert f"docs/{topic}.md" in names
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "not a medical device" in readme
    assert "make demo" in readme and "make test" in readme


def test_every_fence_names_its_language():
    unnamed = [b.where for b in ALL_BLOCKS if not b.lang]
    assert not unnamed, f"fenced blocks without a language (```bash, ```text, ...): {unnamed}"


def test_every_command_block_is_marked_runnable_or_not_with_a_reason():
    problems = []
    for block in ALL_BLOCKS:
        if block.lang not in COMMAND_LANGUAGES:
            continue
        if block.marker is None:
            problems.append(f"{block.where}: no <!-- runnable --> or <!-- not-runnable: reason --> before it")
        elif block.marker.startswith("not-runnable") and not block.marker.split(":", 1)[1].strip():
            problems.append(f"{block.where}: not-runnable without a reason")
    assert not problems, "\n".join(problems)


def test_every_bash_block_parses():
    """Not-runnable blocks cannot run here, but they can still be valid shell (``bash -n``)."""
    problems = []
    for block in ALL_BLOCKS:
        if block.lang in {"bash", "sh", "shell"}:
            proc = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
            if proc.returncode != 0:
                problems.append(f"{block.where}: {proc.stderr.strip()}")
    assert not problems, "\n".join(problems)


def test_generated_blocks_match_their_files():
    assert doc_blocks.sync(check=True) == [], "run `python bench/doc_blocks.py` and commit the result"
    readme = (REPO_ROOT / "README.md").read_text()
    assert "<!-- generated: figures demo_run" in readme, "the README's demo figures come from docs/figures/demo_run.json"


def test_a_figure_typed_over_is_caught_and_rewritten(tmp_path, monkeypatch):
    """Editing a number inside a generated block makes the check fail; a sync puts it back."""
    page = tmp_path / "page.md"
    original = (REPO_ROOT / "README.md").read_text()
    block = next(b for b in doc_blocks.blocks(REPO_ROOT / "README.md") if b.spec.startswith("figures"))
    first_row = block.body.splitlines()[2]
    page.write_text(original.replace(first_row, first_row.replace("|", "| 1 +", 2)))
    monkeypatch.setattr(doc_blocks, "doc_files", lambda: [page])
    monkeypatch.setattr(doc_blocks, "ROOT", tmp_path)
    assert doc_blocks.sync(check=True) == ["page.md"]
    assert doc_blocks.sync() == ["page.md"]
    assert page.read_text() == original


# --- links -------------------------------------------------------------------------------


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings (lower case, punctuation dropped, spaces to
    hyphens, repeats numbered)."""
    anchors: set[str] = set()
    in_fence = False
    for line in page.read_text().splitlines():
        if FENCE.match(line) or line.strip() == "```":
            in_fence = not in_fence
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_fence or not match:
            continue
        text = unicodedata.normalize("NFKC", match[1]).lower()
        slug = "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")
        candidate, n = slug, 1
        while candidate in anchors:
            candidate, n = f"{slug}-{n}", n + 1
        anchors.add(candidate)
    return anchors


def prose(page: Path) -> str:
    """The page without its fenced blocks (links in code are not links)."""
    blocks = {(b.line, b.code) for b in code_blocks(page)}
    skip: set[int] = set()
    for line, code in blocks:
        skip.update(range(line - 1, line + code.count("\n") + 1))
    return "\n".join(text for i, text in enumerate(page.read_text().splitlines()) if i not in skip)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_and_anchors_resolve(page):
    problems = []
    for match in LINK.finditer(prose(page)):
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        relative = os.path.relpath(path, REPO_ROOT)
        if relative.startswith(".."):
            problems.append(f"{target}: outside the repository")
            continue
        if not path.exists():
            problems.append(f"{target}: no such file")
            continue
        if anchor and anchor not in heading_anchors(path):
            problems.append(f"{target}: no heading with anchor #{anchor} in {relative}")
    assert not problems, f"{page.relative_to(REPO_ROOT)}:\n" + "\n".join(problems)


def test_the_anchor_rule_is_githubs():
    page = REPO_ROOT / "docs" / "api.md"
    assert "the-on-demand-service-cxr-api" in heading_anchors(page)
    assert "behind-a-reverse-proxy" in heading_anchors(page)


# --- running the commands -----------------------------------------------------------------

SQL_PAGES = sorted({b.page for b in ALL_BLOCKS if b.runnable and b.lang == "sql"})
BASH_PAGES = sorted({b.page for b in ALL_BLOCKS if b.runnable and b.lang in {"bash", "sh", "shell"}})


def sql_statements(code: str) -> list[tuple[str, dict]]:
    """The statements of a ``sql`` block, each with the parameters its comment names
    (``(parameters: {...})``)."""
    statements = []
    for chunk in re.split(r";\s*(?:\n|$)", code):
        if not chunk.strip():
            continue
        params = re.search(r"\(parameters: (\{.*?\})\)", chunk)
        statements.append((chunk, ast.literal_eval(params[1]) if params else {}))
    return statements


def test_sql_statements_split_and_bind():
    code = "-- a   (parameters: {'n': 3})\nSELECT 1\nLIMIT :n;\n\n-- b\nSELECT 2;\n"
    assert [(s.strip().splitlines()[-1], p) for s, p in sql_statements(code)] == [("LIMIT :n", {"n": 3}), ("SELECT 2", {})]


@pytest.mark.parametrize("page", SQL_PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_runnable_sql_runs_on_a_migrated_database(page, migrated_url):
    from sqlalchemy import text

    from db.engine import get_engine

    ran = 0
    engine = get_engine(migrated_url)
    for block in (b for b in code_blocks(page) if b.runnable and b.lang == "sql"):
        for statement, params in sql_statements(block.code):
            with engine.connect() as conn:
                transaction = conn.begin()
                try:
                    conn.execute(text(statement), params)
                except Exception as error:
                    pytest.fail(f"{block.where}: {type(error).__name__}: {error}\n{statement}")
                finally:
                    transaction.rollback()
            ran += 1
    assert ran > 0


@pytest.mark.server
@pytest.mark.parametrize("page", BASH_PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_runnable_bash_blocks_run(page, real_prefect_server, tmp_path):
    script = "\n".join(b.code for b in code_blocks(page) if b.runnable and b.lang in {"bash", "sh", "shell"})
    work = tmp_path / "work"
    work.mkdir()
    for name in ("configs", "bench"):  # the relative paths the docs use
        if (REPO_ROOT / name).exists():
            (work / name).symlink_to(REPO_ROOT / name)
    env = {k: v for k, v in real_prefect_server.env.items() if not k.startswith("CXR_")}
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}",
            "CXR_HOME": str(tmp_path / "home"),
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "CXR_TORCH_THREADS": "1",
            "CXR_PROGRESS": "never",
        }
    )
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"{page.relative_to(REPO_ROOT)}: exit {proc.returncode}\n{script}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def test_the_bash_pages_run_something():
    """The runnable set is not empty: the data path and the CLI at least."""
    names = {str(p.relative_to(REPO_ROOT)) for p in BASH_PAGES}
    assert {"docs/data.md", "docs/install.md", "docs/cli.md"} <= names
