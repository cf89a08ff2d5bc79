"""A flow run's report is two clicks from its page in the Prefect UI: the run's only flow-level
artifact is an unkeyed link to the report, which the UI's Artifacts tab lists first, and the
card's first line (the description's) is the link itself. Against the session's Prefect server,
read the way the UI reads it (``POST /artifacts/filter`` with the run's id)."""

from __future__ import annotations

import httpx
from prefect import flow, task

from tasks.artifacts import link_run_to_report, publish_markdown, publish_report_link


def run_artifacts(flow_run_id) -> list[dict]:
    """What the UI's Artifacts tab asks for: every artifact of the run but results."""
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}, "type": {"not_any_": ["result"]}}}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_the_runs_first_artifact_is_a_link_to_its_report(prefect_server, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_REPORTS_BASE_URL", "https://cxr.example.org/reports")
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "scoring_7.html").write_text("<html></html>")
    (reports / "dataset_7.html").write_text("<html></html>")

    @task
    def render() -> str:  # what a render task publishes: a markdown summary and the role's keyed link
        publish_markdown("cxr-test-summary", "summary")
        publish_report_link("cxr-test-report", reports / "scoring_7.html", reports)
        return str(reports / "scoring_7.html")

    @flow
    def night() -> str:
        report = render()
        return link_run_to_report("scoring report", report, reports, {"dataset report": reports / "dataset_7.html"})

    state = night(return_state=True)
    url = state.result()
    assert url == "https://cxr.example.org/reports/scoring_7.html"
    artifacts = run_artifacts(state.state_details.flow_run_id)
    assert len(artifacts) == 3
    # The tab's "Flow run" section comes first (its own order is the server's, not creation time):
    # the link is the only artifact there.
    (link,) = [a for a in artifacts if a["task_run_id"] is None]
    assert link["key"] is None and f"]({url})" in link["data"]  # Prefect keeps a link artifact as Markdown
    lines = [line for line in link["description"].splitlines() if line]
    assert lines[0] == f"[Open the scoring report]({url})"
    assert lines[1] == "[Open the dataset report](https://cxr.example.org/reports/dataset_7.html)"
    assert "not a medical device" in lines[-1]


def test_outside_a_flow_or_inside_a_task_only_the_url(prefect_server, tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "r.html").write_text("")

    @task
    def inside() -> str:
        return link_run_to_report("report", reports / "r.html", reports)

    @flow
    def outer() -> str:
        return inside()

    state = outer(return_state=True)
    assert state.result().endswith("/reports/r.html")
    assert run_artifacts(state.state_details.flow_run_id) == []
    assert link_run_to_report("report", reports / "r.html", reports).endswith("/reports/r.html")
