"""The nightly scoring report (escaped, drift warnings, failure reasons) and the Jinja environment
and filters every report renders with."""

from __future__ import annotations

import math

import numpy as np
import pytest
from jinja2 import StrictUndefined, UndefinedError
from report_contexts import assert_png_images, assert_self_contained, scoring_context
from report_html import parse

from cxrmodel.findings import FINDINGS
from reports import DISCLAIMER, ScoringContext, render_scoring_html, render_scoring_report
from reports.environment import env, fmt, fmt_ci, pct


def test_scoring_report_escapes_failure_reason(tmp_path):
    ctx = scoring_context()
    out = render_scoring_report(ScoringContext(**ctx), tmp_path / "runs" / "scoring.html")
    html = out.read_text(encoding="utf-8")
    parsed = parse(html)

    assert "&lt;b&gt;bad&lt;/b&gt;" in html
    assert "<b>" not in html
    assert "b" not in parsed.start_tags
    failures = parsed.tables["failures-table"]
    assert failures == [["00001234_001", "unreadable DICOM: <b>bad</b> transfer syntax"]]

    assert ctx["title"] in parsed.text
    assert "run-42" in parsed.text and "ts-7" in parsed.text
    assert "12,345" in parsed.text
    assert DISCLAIMER in parsed.text
    flags = parsed.tables["flags-table"]
    assert [r[0] for r in flags] == list(FINDINGS)  # put back in FINDINGS order
    assert flags[0][2] == "1.0%" and flags[0][3] == "2.0%"
    assert "Effusion" in parsed.text and "0.970" in parsed.text
    assert_png_images(parsed, 1)
    assert_self_contained(html, parsed)


def test_scoring_report_with_nothing_to_show(tmp_path):
    ctx = scoring_context()
    ctx.update(failures=[], flags=[], top_studies={})
    parsed = parse(render_scoring_report(ScoringContext(**ctx), tmp_path / "s.html").read_text(encoding="utf-8"))
    assert "No study failed" in parsed.text
    assert_png_images(parsed, 0)


def test_scoring_report_drift_warning_and_reason_summary():
    ctx = scoring_context()
    ctx["run"]["n_scored"] = 1000
    ctx["flags"] = [{"finding": f, "n_flagged": 100, "flag_rate": 0.1, "training_prevalence": 0.1} for f in FINDINGS]
    ctx["flags"][1].update(n_flagged=300, flag_rate=0.3)  # Cardiomegaly 3x
    ctx["flags"][13].update(n_flagged=1, flag_rate=0.001, training_prevalence=0.01)  # Hernia: 0.1x, 10 expected
    ctx["failures"] = [{"study_key": f"k{i}", "reason": "empty image" if i % 3 else "missing metadata"} for i in range(6)]
    parsed = parse(render_scoring_html(ScoringContext(**ctx)))
    assert "drift-warning" in parsed.ids and "drift-rule" in parsed.ids
    text = parsed.text
    assert "2 findings diverge" in text
    assert "Cardiomegaly (30.0% flagged vs 10.0% in training)" in text and "Hernia (0.1% flagged" in text
    flags = parsed.tables["flags-table"]
    drift_rows = [r[0] for r, c in zip(flags, parsed.row_classes["flags-table"], strict=True) if "drift" in c.split()]
    assert drift_rows == ["Cardiomegaly", "Hernia"]
    assert flags[1][4] == "3.00" and flags[1][5] == "drift"
    assert parsed.tables["failure-reasons-table"] == [["empty image", "4"], ["missing metadata", "2"]]


def test_scoring_report_without_drift_has_no_warning():
    ctx = scoring_context()
    ctx["flags"] = [{"finding": f, "n_flagged": 100, "flag_rate": 0.1, "training_prevalence": 0.12} for f in FINDINGS]
    parsed = parse(render_scoring_html(ScoringContext(**ctx)))
    assert "drift-warning" not in parsed.ids and "drift-rule" in parsed.ids
    assert "failure-reasons-table" not in parsed.tables  # one failure: no summary table


# --------------------------------------------------------------------------- filters and environment


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "—"),
        (0.12345, "0.123"),
        (12345, "12,345"),
        (np.int64(1234567), "1,234,567"),
        (np.float32(0.5), "0.500"),
        (float("nan"), "—"),
        (math.inf, "—"),
        (True, "yes"),
        ("text", "text"),
    ],
)
def test_fmt_filter(value, expected):
    assert fmt(value) == expected
    assert env.filters["fmt"](value) == expected


def test_fmt_through_template_and_pct():
    t = env.from_string("{{ a | fmt }}|{{ b | fmt }}|{{ c | fmt }}|{{ d | pct }}")
    assert t.render(a=None, b=0.12345, c=12345, d=0.1234) == "—|0.123|12,345|12.3%"
    assert pct(None) == "—"


def test_environment_is_strict_and_escapes_templates():
    assert env.undefined is StrictUndefined
    assert env.trim_blocks and env.lstrip_blocks
    template = env.get_template("base.html.j2")
    assert template.environment.autoescape("evaluation.html.j2") is True
    with pytest.raises(UndefinedError):
        template.render(title="t")  # generated_at is missing


def test_fmt_ci():
    assert fmt_ci(0.12345, 0.5) == "0.123–0.500"
    assert fmt_ci(None, 0.5) == fmt_ci(0.1, float("nan")) == "—"
    assert env.from_string("{{ a | ci(b) }}").render(a=0.1, b=0.2) == "0.100–0.200"


def test_scoring_report_says_how_much_the_similar_cases_mean():
    ctx = scoring_context()
    ctx["top_studies"] = {"Effusion": [("00000001_000", 0.97, [("00000009_000", 0.71, "Effusion")])]}
    parsed = parse(render_scoring_html(ScoringContext(**ctx)))
    assert "retrieval-quality" not in parsed.ids  # an index without stored figures: no claim
    ctx["retrieval"] = {"k": 5, "precision": 0.46, "random": 0.385, "prevalence": 0.402, "n": 690}
    parsed = parse(render_scoring_html(ScoringContext(**ctx)))
    assert "retrieval-quality" in parsed.ids
    text = " ".join(parsed.text.split())
    assert "of the 5 most similar labelled studies, 0.460 share at least one finding" in text
    assert "690 labelled studies" in text and "0.385 for random retrieval" in text and "0.402" in text
