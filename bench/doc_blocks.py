"""Generated blocks in README.md and docs/*.md: figures from benchmark output files, SQL from
``db/queries.py``. Nothing in such a block is typed by hand, so the docs cannot drift from
what the bench measured or from the queries the tests run.

A block is delimited by two HTML comments, invisible on GitHub::

    <!-- generated: figures demo_run match="macro AUROC" -->
    ...rewritten by this script...
    <!-- /generated -->

Kinds:

- ``figures NAME [match=TEXT]``: the table of ``docs/figures/NAME.json``, the rows a benchmark
  printed (its ``BENCH`` lines, see ``bench/common.py``) with when and where it ran; ``match``
  keeps the rows whose figure contains TEXT (``a|b``: either).
- ``sql [TITLE]``: the example queries of ``db.queries.EXAMPLE_QUERIES`` (or the one named
  TITLE) as a ``sql`` block, its parameters in a comment.

Commands::

    python bench/doc_blocks.py record demo_run     # run bench/demo_run.py, keep its figures, rewrite the blocks
    python bench/doc_blocks.py record demo_run --log out.txt   # the same from a captured run's stdout
    python bench/doc_blocks.py record demo_run --log out.txt --note "..."   # with a sentence on the conditions
    python bench/doc_blocks.py                     # rewrite every block from its file
    python bench/doc_blocks.py --check             # exit 1 and name the stale blocks (tests/test_docs.py)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"
BLOCK = re.compile(r"^(<!-- generated: (?P<spec>.*?) -->\n)(?P<body>.*?)^(<!-- /generated -->)", re.DOTALL | re.MULTILINE)


def doc_files() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# --- recording ---------------------------------------------------------------------------


def bench_rows(stdout: str) -> list[dict]:
    """The figures a benchmark printed: its ``BENCH {json}`` lines, in order."""
    return [json.loads(line[6:]) for line in stdout.splitlines() if line.startswith("BENCH ")]


def record(name: str, stdout: str, command: str, note: str | None = None) -> Path:
    """Write ``docs/figures/NAME.json``: the rows, the command, the date, the machine and the
    load on it when the record was made (a busy machine explains a slow wall time)."""
    rows = bench_rows(stdout)
    if not rows:
        raise SystemExit(f"{command}: printed no BENCH lines; nothing recorded")
    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "CXR_TORCH_THREADS") if k in os.environ}
    data = {
        "command": command,
        "recorded": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores" + (f", {', '.join(f'{k}={v}' for k, v in threads.items())}" if threads else ""),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "note": note,
        "rows": rows,
    }
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# --- rendering ---------------------------------------------------------------------------


def _value(row: dict) -> str:
    value = row["value"]
    if value is None:
        return "—"
    text = f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"
    return f"{text} {row['unit']}".strip()


def render_figures(name: str, match: str | None = None) -> str:
    data = json.loads((FIGURES / f"{name}.json").read_text())
    wanted = match.split("|") if match else None
    rows = [r for r in data["rows"] if wanted is None or any(w in r["figure"] for w in wanted)]
    if not rows:
        raise ValueError(f"docs/figures/{name}.json has no figure containing {match!r}")
    lines = ["| figure | value | reference |", "|---|---|---|"]
    for r in rows:
        mark = {True: " (met)", False: " (**missed**)", None: ""}[r.get("ok")]
        lines.append(f"| {r['figure']} | {_value(r)} | {r['reference']}{mark} |")
    lines.append("")
    note = f" {data['note']}" if data.get("note") else ""
    lines.append(f"*From `docs/figures/{name}.json`: `{data['command']}`, {data['recorded']}, {data['machine']}.{note}*")
    return "\n".join(lines) + "\n"


def render_sql(title: str | None = None) -> str:
    from db.queries import EXAMPLE_QUERIES

    chosen = {title: EXAMPLE_QUERIES[title]} if title else EXAMPLE_QUERIES
    parts = []
    for name, (sql, params) in chosen.items():
        note = f"   (parameters: {params!r})" if params else ""
        body = "\n".join(line[8:] if line.startswith(" " * 8) else line.strip() for line in sql.strip("\n").splitlines())
        parts.append(f"-- {name}{note}\n{body.rstrip()};")
    return "```sql\n" + "\n\n".join(parts) + "\n```\n"


@dataclass(frozen=True)
class Block:
    path: Path
    spec: str
    body: str

    def expected(self) -> str:
        kind, *args = shlex.split(self.spec)
        options = dict(a.split("=", 1) for a in args if "=" in a)
        positional = [a for a in args if "=" not in a]
        if kind == "figures":
            return render_figures(positional[0], options.get("match"))
        if kind == "sql":
            return render_sql(positional[0] if positional else None)
        raise ValueError(f"{self.path.name}: unknown generated block kind {kind!r}")


def blocks(path: Path) -> list[Block]:
    return [Block(path, m["spec"], m["body"]) for m in BLOCK.finditer(path.read_text())]


def sync(check: bool = False) -> list[str]:
    """Rewrite every generated block (or, with ``check``, only name the stale ones)."""
    stale = []
    for path in doc_files():
        text = path.read_text()
        new = BLOCK.sub(lambda m, p=path: m[1] + Block(p, m["spec"], m["body"]).expected() + m[4], text)
        if new != text:
            stale.append(str(path.relative_to(ROOT)))
            if not check:
                path.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="name stale blocks and exit 1; change nothing")
    sub = parser.add_subparsers(dest="command")
    rec = sub.add_parser("record", help="run bench/NAME.py (or read --log) and keep its figures")
    rec.add_argument("name")
    rec.add_argument("--log", type=Path, help="stdout of a run made earlier, instead of running it now")
    rec.add_argument("--command", dest="what", help="what produced the log (default: python bench/NAME.py)")
    rec.add_argument("--note", help="one sentence on the conditions, e.g. what else ran on the machine")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.command == "record":
        command = args.what or f"python bench/{args.name}.py"
        if args.log:
            stdout = args.log.read_text()
        else:
            stdout = subprocess.run([sys.executable, str(ROOT / "bench" / f"{args.name}.py")], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout  # fmt: skip
        print(f"recorded {record(args.name, stdout, command, args.note).relative_to(ROOT)}")
    stale = sync(check=args.check)
    for path in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
