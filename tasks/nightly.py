"""The night's headline in the Prefect UI: one Markdown artifact that answers "how did tonight go"."""

from __future__ import annotations

from typing import Protocol

from prefect import task

from cxrmodel.findings import FINDINGS
from cxrmodel.layout import HomeLayout
from db import scoring
from db.engine import session_scope
from db.scoring import ScoringSummary
from deployments.settings import workspace
from tasks.artifacts import markdown_link, markdown_table, md, publish_markdown, report_url

NIGHT_KEY = "cxr-nightly"


class RefreshOutcome(Protocol):
    """What the night's summary reads of a refresh (``flows.results.RefreshResult`` has it):
    a protocol, so this task layer never imports the flows that call it."""

    refresh_run_id: int
    rows: int
    added: int
    updated: int
    unchanged: int
    quarantined: int
    dataset_report: str | None


def pacs_markdown(pacs: dict) -> list[str]:
    """The PACS lines of the night: pulled / skipped / failed, reports sent, and each problem."""
    pull, push = pacs.get("pull") or {}, pacs.get("push") or {}
    lines = [
        "**PACS** (research output written back, not a diagnosis)",
        "",
        markdown_table(
            [
                {
                    "studies searched": pull.get("studies"),
                    "pulled": pull.get("registered"),
                    "skipped": pull.get("skipped"),
                    "failed": pull.get("failed"),
                    "to retry": pull.get("retry"),
                    "reports sent": push.get("sent"),
                    "refused": push.get("refused"),
                    "left for next night": (push.get("to_send", 0) - push.get("sent", 0)) if push else None,
                }
            ]
        ),
    ]
    problems = [*(pacs.get("errors") or []), *(e for e in (pull.get("error"), push.get("error")) if e)]
    problems += [*(pull.get("problems") or []), *(push.get("problems") or [])]
    lines += [f"- {md(p)}" for p in problems[:50]]
    if len(problems) > 50:
        lines.append(f"- ... and {len(problems) - 50} more")
    return lines


def night_markdown(
    summary: ScoringSummary,
    refresh: RefreshOutcome | None,
    refresh_error: str | None,
    links: dict[str, str],
    pacs: dict | None = None,
) -> str:
    """The Markdown of :data:`NIGHT_KEY`: refresh outcome, scoring counts, flags per finding, report links."""
    lines = [f"## Night of {summary.started_at:%Y-%m-%d} (scoring run {summary.scoring_run_id})", ""]
    if refresh_error:
        lines.append(f"**Refresh FAILED**: {md(refresh_error)}. Scoring used the studies registered before it.")
    elif refresh is not None:
        lines.append(f"**Refresh** completed (refresh run {refresh.refresh_run_id}).")
        lines += [
            "",
            markdown_table(
                [
                    {
                        "metadata rows": refresh.rows,
                        "added": refresh.added,
                        "updated": refresh.updated,
                        "unchanged": refresh.unchanged,
                        "quarantined": refresh.quarantined,
                    }
                ]
            ),
        ]
    lines += [
        "",
        f"**Scoring** with champion {md(summary.model_name)} (threshold set {summary.threshold_set_id}): {md(summary.status)}.",
        "",
        markdown_table(
            [
                {
                    "candidates": summary.n_candidates,
                    "scored": summary.n_scored,
                    "failed": summary.n_failed,
                    "skipped": summary.n_skipped,
                }
            ]
        ),
        "",
        "**Positive decisions per finding**",
        "",
        markdown_table(
            [
                {
                    "finding": f,
                    "flagged": summary.flagged.get(f, 0),
                    "rate": (summary.flagged.get(f, 0) / summary.n_scored) if summary.n_scored else None,
                }
                for f in FINDINGS
                if summary.flagged.get(f, 0)
            ]
        ),
    ]
    if pacs is not None:
        lines += ["", *pacs_markdown(pacs)]
    if links:
        lines += ["", "Reports: " + " · ".join(markdown_link(text, url) for text, url in links.items())]
    return "\n".join(lines)


@task(name="publish-night-summary")
def publish_night_summary(
    refresh: RefreshOutcome | None,
    refresh_error: str | None,
    scoring_run_id: int,
    scoring_report: str | None = None,
    home: str | None = None,
    database_url: str | None = None,
    pacs: dict | None = None,
) -> str:
    """Publish the night's Markdown artifact (key :data:`NIGHT_KEY`); return its Markdown."""
    ws = workspace(home, database_url)
    home_path, url = ws.home, ws.database_url
    with session_scope(url) as session:
        summary = scoring.scoring_summary(session, scoring_run_id)
    reports = HomeLayout(home_path).reports
    links = {}
    if scoring_report:
        links["scoring report"] = report_url(scoring_report, reports)
    if refresh and refresh.dataset_report:
        links["dataset report"] = report_url(refresh.dataset_report, reports)
    markdown = night_markdown(summary, refresh, refresh_error, links, pacs)
    publish_markdown(NIGHT_KEY, markdown, description=f"Night of {summary.started_at:%Y-%m-%d}: refresh and scoring")
    return markdown
