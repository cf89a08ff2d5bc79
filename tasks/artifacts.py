"""Prefect artifacts: stable keys per role, links that a browser can open, escaped Markdown.

- **Keys per role.** The champion's artifacts keep the stable keys (``cxr-per-class-metrics``,
  ``cxr-thresholds``, ...), so their history in the UI is the champion's history. A baseline's
  or a challenger's get the key suffixed by its model kind (``cxr-per-class-metrics-knn-embedding``).
- **Links.** Reports live under ``<home>/reports`` and are served read-only by
  ``cxr reports serve`` (or the scoring API) under ``Settings.public_reports_url``; a link
  artifact names that URL, never a ``file://`` path of the host that wrote the report.
- **A run's report, two clicks away.** A flow run that writes a report publishes an unkeyed
  link artifact to it in the flow itself (:func:`link_run_to_report`), its only artifact made
  outside a task (the others come from tasks): the UI's Artifacts tab lists the flow run's own
  artifacts before its tasks', so the link comes first; its card's first line is the link.
- **Markdown.** Values from the database (model names, study keys, reasons) are escaped, so a
  name with HTML or a ``|`` cannot change the artifact's markup.

Artifacts are published only inside a Prefect flow or task run: outside one (tests,
benchmarks, a task's ``.fn``) Prefect would start a throw-away server to hold them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from deployments.settings import Settings

_KEY_PART = re.compile(r"[^a-z0-9]+")


def in_prefect_run() -> bool:
    """True inside a Prefect flow or task run."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def role_key(base: str, kind: str | None = None) -> str:
    """``base`` for the champion (``kind`` None), else ``base`` suffixed by the model kind in
    Prefect's key alphabet (lower-case letters, digits, dashes)."""
    if kind is None:
        return base
    return f"{base}-{_KEY_PART.sub('-', kind.lower()).strip('-')}"


def report_url(path: str | Path, reports_dir: str | Path, settings: Settings | None = None) -> str:
    """The public URL of a report file under ``reports_dir`` (``Settings.public_reports_url``
    + its relative path, percent-encoded). A path outside ``reports_dir`` is refused: the report
    server would not serve it either."""
    root = Path(reports_dir).resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"{target} is not inside the reports folder {root}")
    base = (settings or Settings()).public_reports_url
    return f"{base}/{quote(target.relative_to(root).as_posix())}"


def md(value: object) -> str:
    """``value`` as text safe inside a Markdown table cell (HTML escaped, pipes and newlines neutralised)."""
    text = html.escape(str(value), quote=False)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return md(value)


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (floats to three decimals, None as ``-``, text escaped)."""
    if not rows:
        return "_none_"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(md(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown_link(text: str, url: str) -> str:
    return f"[{md(text)}]({quote(url, safe=':/?#[]@!$&()*+,;=%-._~')})"


def publish_markdown(key: str, markdown: str, description: str | None = None) -> None:
    if in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(key=key, markdown=markdown, description=description)


def publish_table(key: str, table: Iterable[Mapping[str, object]], description: str | None = None) -> None:
    if in_prefect_run():
        from prefect.artifacts import create_table_artifact

        rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in table]
        create_table_artifact(key=key, table=rows, description=description)


def publish_report_link(key: str, path: str | Path, reports_dir: str | Path, description: str | None = None) -> str:
    """Publish a link artifact to the served report at ``path``; return the URL."""
    url = report_url(path, reports_dir)
    if in_prefect_run():
        from prefect.artifacts import create_link_artifact

        create_link_artifact(key=key, link=url, link_text=Path(path).name, description=description)
    return url


def link_run_to_report(
    title: str, path: str | Path, reports_dir: str | Path, more: Mapping[str, str | Path] | None = None
) -> str:
    """Publish the current flow run's link to its report (``title``, the file at ``path``) and
    return the URL. Called in a flow's body, never in a task, and the flow's only artifact made
    there: it belongs to the flow run itself, whose artifacts the Prefect UI lists before its
    tasks', so it comes first on the run's Artifacts tab, and the card's
    first line (the description's, which the card renders as Markdown) is the link: run page,
    Artifacts tab, report. No key: the link is the run's, not a role's (the keyed report links
    are :func:`publish_report_link`'s). ``more`` adds links to the run's other reports on the
    following lines. Outside a flow run, or inside a task, only the URL is returned."""
    url = report_url(path, reports_dir)
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None or TaskRunContext.get() is not None:
        return url
    from prefect.artifacts import create_link_artifact

    lines = [markdown_link(f"Open the {title}", url)]
    lines += [markdown_link(f"Open the {name}", report_url(other, reports_dir)) for name, other in (more or {}).items()]
    lines.append("Research tool, not a medical device.")
    create_link_artifact(link=url, link_text=f"{title}: {Path(path).name}", description="\n\n".join(lines))
    return url
