"""The typed report contexts: a wrong or missing field fails when the context is built, and what
is built is what renders (two evaluations with different arrays give two different reports)."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
from report_contexts import full_context, make_context, scoring_context
from report_html import parse
from test_dataset_report import make_context as dataset_context

from reports import (
    DatasetContext,
    EvaluationContext,
    ScoringContext,
    render_dataset_html,
    render_evaluation_html,
    render_scoring_html,
)
from reports.contexts import ClassMetrics, SplitCount, SubgroupMetrics, TopStudy


@pytest.mark.parametrize(
    ("build", "contract", "field"),
    [
        (make_context, EvaluationContext, "per_class"),
        (make_context, EvaluationContext, "y_true"),
        (scoring_context, ScoringContext, "flags"),
        (dataset_context, DatasetContext, "quarantined"),
        (dataset_context, DatasetContext, "refresh"),  # may be None, but must be given
    ],
)
def test_a_missing_field_fails_at_construction(build, contract, field):
    ctx = build()
    del ctx[field]
    with pytest.raises(pydantic.ValidationError, match=field) as caught:
        contract(**ctx)
    assert [e["type"] for e in caught.value.errors()] == ["missing"]


@pytest.mark.parametrize(
    ("build", "contract"),
    [(make_context, EvaluationContext), (scoring_context, ScoringContext), (dataset_context, DatasetContext)],
)
def test_a_misspelt_field_fails_and_the_context_is_frozen(build, contract):
    ctx = build()
    with pytest.raises(pydantic.ValidationError, match="titel"):
        contract(**ctx, titel="typo")
    context = contract(**ctx)
    with pytest.raises(pydantic.ValidationError):
        context.title = "changed"


def test_nested_records_are_checked_too():
    ctx = make_context(epochs=False, examples=0)
    del ctx["per_class"][0]["tp"]
    with pytest.raises(pydantic.ValidationError, match=r"per_class\.0\.tp"):
        EvaluationContext(**ctx)
    ctx = scoring_context()
    ctx["run"]["n_scored"] = "many"
    with pytest.raises(pydantic.ValidationError, match=r"run\.n_scored"):
        ScoringContext(**ctx)


def test_renderers_take_only_their_context():
    with pytest.raises(TypeError, match="EvaluationContext"):
        render_evaluation_html(make_context())
    with pytest.raises(TypeError, match="ScoringContext"):
        render_scoring_html(scoring_context())
    with pytest.raises(TypeError, match="DatasetContext"):
        render_dataset_html(EvaluationContext(**make_context(epochs=False, examples=0)))


def test_arrays_must_agree_with_each_other_and_the_findings():
    ctx = make_context(epochs=False, examples=0)
    with pytest.raises(pydantic.ValidationError, match="both or neither"):
        EvaluationContext(**{**ctx, "y_prob": None})
    with pytest.raises(pydantic.ValidationError, match=r"\[N, 14\]"):
        EvaluationContext(**{**ctx, "y_true": ctx["y_true"][:, :5], "y_prob": ctx["y_prob"][:, :5]})
    with pytest.raises(pydantic.ValidationError, match="y_prob_calibrated"):
        EvaluationContext(**{**ctx, "y_prob_calibrated": ctx["y_prob"][:10]})
    no_arrays = EvaluationContext(**{**ctx, "y_true": None, "y_prob": None})
    assert "roc" not in parse(render_evaluation_html(no_arrays)).ids


def test_embedding_map_is_checked():
    ctx = full_context(n_examples=0)
    with pytest.raises(pydantic.ValidationError, match="rows"):
        EvaluationContext(**{**ctx, "embedding_map": {"xy": np.zeros((3, 2))}})
    with pytest.raises(pydantic.ValidationError, match="index"):
        EvaluationContext(**{**ctx, "embedding_map": {"xy": np.zeros((2, 2)), "rows": [0, 10_000]}})
    with pytest.raises(pydantic.ValidationError, match="y_true"):
        EvaluationContext(**{**ctx, "y_true": None, "y_prob": None, "y_prob_calibrated": None})
    labelled = EvaluationContext(**{**ctx, "embedding_map": {"xy": np.zeros((3, 2)), "labels": np.zeros((3, 14))}})
    assert labelled.embedding_map.rows is None


def test_rows_from_storage_ignore_extra_columns_and_read_group_name():
    row = ClassMetrics(finding="Mass", tp=1, fp=2, tn=3, fn=4, evaluation_id=9)
    assert row.threshold is None and not hasattr(row, "evaluation_id")
    assert SubgroupMetrics(attribute="sex", group_name="F", n_studies=3).group == "F"
    assert SplitCount.model_validate(12) == SplitCount(n_studies=12)


def test_top_studies_are_read_from_tuples():
    ctx = scoring_context()
    ctx["top_studies"]["Mass"] = [("a.png", 0.9, [("b.png", 0.8, "Mass")]), ("c.png", 0.5)]
    top = ScoringContext(**ctx).top_studies["Mass"]
    assert top[0] == TopStudy("a.png", 0.9, (("b.png", 0.8, "Mass"),)) and top[1].similar is None


def test_two_evaluations_with_different_arrays_render_two_reports():
    """The arrays travel with their evaluation's context: a second evaluation of the same model
    and split shows its own curves, not the first one's."""
    first = make_context(epochs=False, examples=0)
    second = make_context(epochs=False, examples=0)
    rng = np.random.default_rng(99)
    second["y_prob"] = rng.random(second["y_prob"].shape)  # another evaluation: other probabilities
    figures = {}
    for name, ctx in (("first", first), ("second", second)):
        parsed = parse(render_evaluation_html(EvaluationContext(**ctx)))
        figures[name] = {img["alt"]: img["src"] for img in parsed.imgs}
    for alt in ("ROC curves of all findings", "Precision-recall curve per finding"):
        assert figures["first"][alt] != figures["second"][alt], alt
    again = parse(render_evaluation_html(EvaluationContext(**first)))
    assert {img["alt"]: img["src"] for img in again.imgs} == figures["first"]  # the same arrays, the same report
