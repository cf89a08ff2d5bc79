"""Similar-case retrieval: an exact cosine index over study embeddings, and the similar cases
in the scoring report (the tasks on a real registry: tests/test_similarity_tasks.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from cxrmodel.explain.similarity import EmbeddingIndex, l2_normalise
from cxrmodel.models.artifacts import ArtifactIntegrityError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit(deg: float) -> list[float]:
    r = np.deg2rad(deg)
    return [np.cos(r), np.sin(r)]


@pytest.fixture
def fan() -> EmbeddingIndex:
    """Unit vectors at 0, 10, 30, 60, 90 and 180 degrees, stored at different lengths (the
    index normalises them, so only the angle counts)."""
    angles = [0, 10, 30, 60, 90, 180]
    lengths = [1.0, 3.0, 0.5, 7.0, 2.0, 10.0]
    vectors = np.array([np.multiply(unit(a), n) for a, n in zip(angles, lengths, strict=True)], dtype=np.float32)
    return EmbeddingIndex(vectors, [f"a{a}" for a in angles])


def test_storage_is_l2_normalised(fan):
    np.testing.assert_allclose(np.linalg.norm(fan.vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(fan.vector("a60"), unit(60), atol=1e-6)
    assert len(fan) == 6 and fan.dim == 2 and "a30" in fan and "a45" not in fan


def test_known_neighbours_and_cosines(fan):
    [hits] = fan.query(np.array([unit(22)]) * 4.0, k=3)  # query length does not matter either
    assert [k for k, _ in hits] == ["a30", "a10", "a0"]  # 8, 12 and 22 degrees away
    np.testing.assert_allclose([c for _, c in hits], np.cos(np.deg2rad([8, 12, 22])), atol=1e-6)

    [hits] = fan.query(np.array([unit(70)]), k=2)
    assert [k for k, _ in hits] == ["a60", "a90"]
    np.testing.assert_allclose([c for _, c in hits], np.cos(np.deg2rad([10, 20])), atol=1e-6)

    [hits] = fan.query(np.array([unit(205)]), k=6)  # everything, most similar first, down to negative cosines
    assert [k for k, _ in hits] == ["a180", "a90", "a60", "a0", "a10", "a30"]
    np.testing.assert_allclose([c for _, c in hits], np.cos(np.deg2rad([25, 115, 145, 155, 165, 175])), atol=1e-6)


def test_ties_keep_index_order():
    index = EmbeddingIndex(np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]]), ["up", "x1", "x2", "x3"])
    [hits] = index.query(np.array([[1.0, 0.0]]), k=3)
    assert [k for k, _ in hits] == ["x1", "x2", "x3"]


def test_several_queries_at_once(fan):
    hits = fan.query(np.array([unit(0), unit(95), unit(-5)]), k=1)
    assert [row[0][0] for row in hits] == ["a0", "a90", "a0"]


def test_query_study_itself_is_excluded(fan):
    queries = np.array([unit(30), unit(30), unit(90)])
    with_self = fan.query(queries, k=2)
    assert with_self[0][0] == ("a30", pytest.approx(1.0, abs=1e-6))
    hits = fan.query(queries, k=2, exclude_keys=["a30", None, "a90"])
    assert [k for k, _ in hits[0]] == ["a10", "a60"]  # 20 and 30 deg away; a30 itself gone
    assert [k for k, _ in hits[1]] == ["a30", "a10"]  # no exclusion for this row
    assert [k for k, _ in hits[2]] == ["a60", "a30"]
    # a key not in the index (an incoming study) excludes nothing; a single key applies to all rows
    assert fan.query(np.array([unit(30)]), k=1, exclude_keys=["incoming.png"]) == [[("a30", pytest.approx(1.0, abs=1e-6))]]
    assert [r[0][0] for r in fan.query(np.array([unit(0), unit(2)]), k=1, exclude_keys="a0")] == ["a10", "a10"]


def test_k_larger_than_index(fan):
    [hits] = fan.query(np.array([unit(0)]), k=50)
    assert len(hits) == 6
    [hits] = fan.query(np.array([unit(0)]), k=50, exclude_keys=["a0"])
    assert len(hits) == 5 and "a0" not in dict(hits)
    assert fan.query(np.array([unit(0)]), k=0) == [[]]
    tiny = EmbeddingIndex(np.array([[1.0, 0.0]]), ["only"])
    assert tiny.query(np.array([[1.0, 0.0]]), k=3, exclude_keys=["only"]) == [[]]
    empty = EmbeddingIndex(np.zeros((0, 2)), [])
    assert empty.query(np.array([[1.0, 0.0]]), k=3) == [[]]


def test_bad_inputs(fan):
    with pytest.raises(ValueError):
        EmbeddingIndex(np.ones((3, 2)), ["a", "b"])
    with pytest.raises(ValueError):
        EmbeddingIndex(np.ones((2, 2)), ["a", "a"])
    with pytest.raises(ValueError):
        fan.query(np.ones((1, 3)), k=1)
    with pytest.raises(ValueError):
        fan.query(np.ones((2, 2)), k=1, exclude_keys=["a0"])
    with pytest.raises(ValueError):
        fan.query(np.ones((1, 2)), k=-1)


def test_zero_vector_has_cosine_zero():
    index = EmbeddingIndex(np.array([[0.0, 0.0], [1.0, 0.0]]), ["zero", "x"])
    [hits] = index.query(np.array([[0.0, 1.0]]), k=2)
    assert dict(hits) == {"zero": 0.0, "x": pytest.approx(0.0, abs=1e-7)}
    assert np.all(np.isfinite(l2_normalise(np.zeros((2, 3)))))


def test_matches_sklearn_cosine_similarity_top_k():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 32)).astype(np.float32)
    queries = rng.normal(size=(40, 32)).astype(np.float32)
    keys = [f"s{i:03d}" for i in range(len(data))]
    index = EmbeddingIndex(data, keys)
    k = 7
    expected = cosine_similarity(queries, data)
    for row, sims in zip(index.query(queries, k), expected, strict=True):
        order = np.argsort(-sims, kind="stable")[:k]
        assert [key for key, _ in row] == [keys[j] for j in order]
        np.testing.assert_allclose([c for _, c in row], sims[order], atol=1e-5)

    # queries that are stored studies, each excluding itself: its true nearest other study
    own = index.query(data[:25] * 3.0, k, exclude_keys=keys[:25])
    full = cosine_similarity(data[:25], data)
    for i, (row, sims) in enumerate(zip(own, full, strict=True)):
        sims[i] = -np.inf
        order = np.argsort(-sims, kind="stable")[:k]
        assert [key for key, _ in row] == [keys[j] for j in order]


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    keys = [f"{i:08d}_000.png" for i in range(60)]
    index = EmbeddingIndex(rng.normal(size=(60, 16)), keys)
    path = tmp_path / "model" / "embeddings.npz"
    sha = index.save(path)
    loaded = EmbeddingIndex.load(path, sha)
    assert loaded.keys == keys
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    assert loaded.vectors.dtype == np.float32
    queries = rng.normal(size=(5, 16))
    assert loaded.query(queries, 4, exclude_keys=keys[:5]) == index.query(queries, 4, exclude_keys=keys[:5])
    with np.load(path, allow_pickle=False) as data:  # plain arrays, readable without pickle
        assert set(data.files) == {"keys", "vectors"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["embeddings.npz"]
    with pytest.raises(ArtifactIntegrityError):
        EmbeddingIndex.load(path, "0" * 64)
    with pytest.raises(FileNotFoundError):
        EmbeddingIndex.load(tmp_path / "missing.npz")


# --------------------------------------------------------------------------- the scoring report


def _scoring_context(top: dict) -> dict:
    return {
        "title": "Nightly scoring",
        "generated_at": "2025-01-02",
        "failures": [],
        "flags": [],
        "top_studies": top,
        "run": {
            "id": 1,
            "model_name": "m",
            "threshold_set_id": 2,
            "started_at": "a",
            "finished_at": "b",
            "n_scored": 3,
            "n_skipped": 0,
            "n_failed": 0,
        },
    }


def test_scoring_report_lists_similar_cases_escaped():
    from reports import ScoringContext, render_scoring_html

    def render(top):
        return render_scoring_html(ScoringContext.model_validate(_scoring_context(top)))

    html = render(
        {
            "Effusion": [
                ("new_001.png", 0.97, [("00000001_000.png", 0.9876, "Effusion|Mass"), ("<b>x</b>.png", 0.5, "<i>No</i>")]),
                ("new_002.png", 0.91),
            ],  # old two-element form still accepted
            "Mass": [("new_003.png", 0.8, [])],
        }
    )
    assert "00000001_000.png" in html and "cos 0.988" in html and "Effusion|Mass" in html
    assert "&lt;b&gt;x&lt;/b&gt;.png" in html and "&lt;i&gt;No&lt;/i&gt;" in html
    assert "<b>" not in html and "<i>" not in html
    assert html.count('<ul class="similar') == 1
    assert "most similar labelled studies" in html
    plain = render({"Effusion": [("new_001.png", 0.97)]})
    assert '<ul class="similar' not in plain and "most similar labelled studies" not in plain
