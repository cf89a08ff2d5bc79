"""The on-demand scoring service as it runs: a real ``uvicorn`` process on a free local port,
over a real registry (a tiny champion), on SQLite and PostgreSQL. Auth, every refusal (and that
it leaves nothing behind), a PNG and the real DICOM fixture scored and stored, the same image
twice as one study, the scores equal to the nightly path's, Grad-CAM and similar cases,
micro-batching of concurrent requests, the champion swapped while the process runs, and a
flip-averaging (TTA) network and a classical champion scoring as nightly scoring does."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from api_support import (
    API_KEY,
    build_registry,
    phantom_png,
    register_network,
    register_pixel_logistic,
    server_env,
    uvicorn_args,
)
from conftest import POSTGRES_URL, BackgroundProcess, _fresh_postgres_database, free_port, wait_for_http

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_UPLOAD = 2 * 1024 * 1024
MAX_PIXELS = 1100 * 1100  # the DICOM fixture is 1024 x 1024
KEY = {"X-API-Key": API_KEY}
DICOM = Path(__file__).parent / "fixtures" / "dicom" / "siim_cxr.dcm"


class Service:
    def __init__(self, registry, base: str, process: BackgroundProcess) -> None:
        self.registry, self.base, self.process = registry, base, process

    def get(self, path: str, headers=KEY, **kw):
        return httpx.get(self.base + path, headers=headers, timeout=60, **kw)

    def score(self, content: bytes, name: str = "study.png", headers=KEY, **fields):
        data = {k: str(v) for k, v in fields.items()}
        return httpx.post(self.base + "/v1/score", headers=headers, files={"image": (name, content)}, data=data, timeout=120)

    def rows(self, sql: str, **params):
        from sqlalchemy import text

        from db.engine import get_engine

        with get_engine(self.registry.url).connect() as conn:
            return conn.execute(text(sql), params).all()

    def counts(self) -> tuple:
        files = (
            sorted(p.name for p in (self.registry.home / "uploads").glob("*"))
            if (self.registry.home / "uploads").exists()
            else []
        )
        tables = tuple(self.rows(f"SELECT COUNT(*) FROM {t}")[0][0] for t in ("studies", "scoring_runs", "predictions"))
        return tables, files


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"api-{request.param}")
    url, cleanup = None, None
    if request.param == "postgresql":
        if not POSTGRES_URL:
            pytest.skip("PostgreSQL case: CXR_TEST_POSTGRES_URL is not set")
        cleanup = _fresh_postgres_database(POSTGRES_URL)
        url = next(cleanup)
    registry = build_registry(work, url)
    port = free_port()
    env = server_env(
        registry,
        CXR_API_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        CXR_API_MAX_PIXELS=str(MAX_PIXELS),
        CXR_API_BATCH_WAIT_MS="40",
    )
    process = BackgroundProcess(uvicorn_args(port), env, work / "server.log").start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", 120, process.process)
        yield Service(registry, f"http://127.0.0.1:{port}", process)
    finally:
        process.stop()
        if cleanup is not None:
            next(cleanup, None)


def _png(width: int, height: int, value: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((height, width), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width x height``, then a few bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + body + b"\x00\x00\x00\x10IDAT" + b"\x00" * 20


def test_health_checks_need_no_key_and_everything_else_does(service):
    assert service.get("/healthz", headers={}).json() == {"status": "ok", "checks": {}}
    ready = service.get("/readyz", headers={})
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "champion": "net-a"}
    for path in (
        "/v1/models",
        "/v1/models/champion",
        "/v1/studies/00000001_000.png/predictions",
        "/openapi.json",
        "/reports/x.html",
    ):
        missing = service.get(path, headers={})
        assert missing.status_code == 401 and missing.json() == {
            "error": "unauthorised",
            "reason": "missing API key: send it in the X-API-Key header",
        }, path
        wrong = service.get(path, headers={"X-API-Key": API_KEY + "x"})
        assert wrong.status_code == 401 and wrong.json()["reason"] == "invalid API key", path
    assert service.score(b"x", headers={"X-API-Key": "nope"}).status_code == 401
    assert service.get("/v1/models", headers={"X-API-Key": "other-key"}).status_code == 200  # any configured key
    assert API_KEY not in service.process.output() and "other-key" not in service.process.output()
    # the response headers: strict CSP, no sniffing, no CORS unless configured
    answer = service.get("/", headers={"Origin": "https://evil.example"})
    assert answer.status_code == 200 and "script-src 'self'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff" and "access-control-allow-origin" not in answer.headers


def test_openapi_documents_the_endpoints_with_examples(service):
    schema = service.get("/openapi.json").json()
    paths = schema["paths"]
    assert {
        "/v1/score",
        "/v1/studies/{study_key}/predictions",
        "/v1/models",
        "/v1/models/champion",
        "/healthz",
        "/readyz",
    } <= set(paths)
    score = paths["/v1/score"]["post"]
    assert {"401", "413", "415", "422", "503"} <= set(score["responses"])
    assert schema["components"]["schemas"]["ScoreResponse"]["examples"][0]["model"]["kind"] == "densenet121_fpn"
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"


def test_every_refusal_is_a_clear_4xx_and_leaves_nothing_behind(service, tmp_path):
    before = service.counts()
    too_big = b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD + 10)
    cases = [
        (service.score(too_big, age=50), 413, "too_large"),
        (service.score(b"just some text, named .png", age=50), 415, "unsupported_type"),
        (service.score(DICOM.read_bytes()[:100], name="x.dcm", age=50), 415, "unsupported_type"),
        (service.score(_png(1200, 1200), age=50), 413, "too_many_pixels"),
        (service.score(_png_header_only(40000, 40000), age=50), 413, "too_many_pixels"),
        (service.score(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, age=50), 422, "undecodable"),
        (service.score(_png(300, 300)[:-40], age=50), 422, "undecodable"),
        (service.score(b"", age=50), 422, "empty_file"),
        (service.score(_png(300, 300)), 422, "missing_metadata"),
        (service.score(_png(300, 300), sex="X"), 422, "invalid_request"),
        (service.score(_png(300, 300), age=200), 422, "invalid_request"),
        (service.score(_png(300, 300), age=50, similar=500), 422, "invalid_request"),
        (service.score(_png(300, 300), age=50, gradcam_finding="Flu"), 422, "invalid_request"),
        (service.get("/v1/studies/%3Cscript%3E/predictions"), 422, "invalid_study_key"),
        (service.get("/v1/studies/" + "a" * 200 + "/predictions"), 422, "invalid_study_key"),
        (service.get("/v1/studies/99999999_999.png/predictions"), 404, "not_found"),
        (service.get("/reports/../cxr.db"), 404, "not_found"),
        (service.get("/reports/%2e%2e/cxr.db"), 404, "not_found"),
    ]
    for i, (answer, status, error) in enumerate(cases):
        assert (answer.status_code, answer.json()["error"]) == (status, error), (i, answer.text)
        assert answer.json()["reason"], i
    assert "outside 0-120" not in cases[10][0].json()["reason"] and "age" in cases[10][0].json()["reason"]

    # a body streamed without Content-Length is cut off as soon as it passes the limit
    boundary = "cxrboundary"

    def chunks():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n').encode()
        for _ in range(MAX_UPLOAD // 65536 + 4):
            yield b"\0" * 65536

    streamed = httpx.post(
        service.base + "/v1/score",
        headers={**KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=chunks(),
        timeout=60,
    )
    assert streamed.status_code == 413 and streamed.json()["error"] == "too_large"
    assert service.counts() == before  # no study, run, prediction or file (not even a temporary one)


def test_png_is_scored_stored_and_matches_the_nightly_path(service, tmp_path):
    from cxrmodel.evaluation.metrics import apply_thresholds
    from cxrmodel.findings import FINDINGS

    image = phantom_png(tmp_path / "new.png", seed=7).read_bytes()
    first = service.score(image, name="../../etc/passwd", age=71, sex="F", view="AP")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["new_study"] and body["study_key"].startswith("sha256-") and body["image_type"] == "png"
    assert body["model"]["name"] == "net-a" and body["threshold_method"] == "fixed"
    assert set(body["probabilities"]) == set(FINDINGS) and body["patient"]["source"] == dict.fromkeys(
        ("age", "sex", "view"), "form"
    )
    assert all(body["decisions"][f] == (body["probabilities"][f] >= 0.5) for f in FINDINGS)
    top = [t["finding"] for t in body["top_findings"]]
    assert top == sorted(FINDINGS, key=lambda f: -body["probabilities"][f])[:3]

    stored = service.rows(
        "SELECT p.finding, p.probability, p.decision, p.threshold_set_id, r.trigger, r.status, r.n_candidates, r.n_scored "
        "FROM predictions p JOIN studies s ON s.id = p.study_id JOIN scoring_runs r ON r.id = p.scoring_run_id "
        "WHERE s.study_key = :k",
        k=body["study_key"],
    )
    assert len(stored) == 14 and {r.finding: r.probability for r in stored} == pytest.approx(body["probabilities"], abs=1e-6)
    assert {(r.trigger, r.status, r.n_candidates, r.n_scored, r.threshold_set_id) for r in stored} == {
        ("on_demand", "completed", 1, 1, body["threshold_set_id"])
    }
    study = service.rows(
        "SELECT age, sex, view, source, labelled, image_path, content_hash FROM studies WHERE study_key = :k", k=body["study_key"]
    )[0]
    assert (study.age, study.sex, study.view, study.source, bool(study.labelled)) == (71.0, "F", "AP", "upload", False)
    assert Path(study.image_path).parent == service.registry.home / "uploads" and Path(study.image_path).read_bytes() == image
    assert study.content_hash == body["content_sha256"]

    # the nightly path (decode from the stored file, batch scoring) gives the same numbers
    nightly = _nightly_probabilities(service, body["study_key"], body["model"]["id"])
    assert nightly == pytest.approx([body["probabilities"][f] for f in FINDINGS], abs=1e-5)
    assert list(apply_thresholds(nightly[None], [0.5] * 14)[0]) == [int(body["decisions"][f]) for f in FINDINGS]

    # the same image again: one study, its rows replaced by the newer run, two on-demand runs
    again = service.score(image, name="other-name.jpg", age=71, sex="F", view="AP").json()
    assert again["study_key"] == body["study_key"] and not again["new_study"]
    assert service.rows("SELECT COUNT(*) FROM studies WHERE content_hash = :h", h=body["content_sha256"])[0][0] == 1
    runs = service.rows(
        "SELECT DISTINCT p.scoring_run_id FROM predictions p JOIN studies s ON s.id = p.study_id WHERE s.study_key = :k",
        k=body["study_key"],
    )
    assert [r[0] for r in runs] == [again["scoring_run_id"]] and again["scoring_run_id"] > body["scoring_run_id"]
    history = service.get(f"/v1/studies/{body['study_key']}/predictions").json()
    assert [p["model"]["name"] for p in history["predictions"]] == ["net-a"] and history["predictions"][0][
        "trigger"
    ] == "on_demand"
    assert history["predictions"][0]["probabilities"] == pytest.approx(body["probabilities"], abs=1e-6)


def test_real_dicom_tags_win_over_the_form(service):
    answer = service.score(DICOM.read_bytes(), name="upload.bin", age=30, sex="F", view="AP")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["image_type"] == "dicom"
    assert body["patient"] == {"age": 62.0, "sex": "M", "view": "PA", "source": dict.fromkeys(("age", "sex", "view"), "dicom")}
    row = service.rows("SELECT age, sex, view FROM studies WHERE study_key = :k", k=body["study_key"])[0]
    assert tuple(row) == (62.0, "M", "PA")
    assert service.score(DICOM.read_bytes()).status_code == 200  # the tags alone are enough metadata


def test_gradcam_and_similar_cases(service):
    from PIL import Image

    labelled = service.registry.images / service.registry.labelled_keys[1]
    body = service.score(labelled.read_bytes(), age=41, sex="F", view="PA", gradcam="true", similar=3).json()
    assert body["study_key"] == service.registry.labelled_keys[1] and not body["new_study"]  # found by content
    png = Image.open(io.BytesIO(base64.b64decode(body["gradcam"]["png_base64"])))
    assert png.format == "PNG" and min(png.size) >= 224 and body["gradcam"]["finding"] == body["top_findings"][0]["finding"]
    similar = body["similar_cases"]
    assert len(similar) == 3 and body["study_key"] not in [c["study_key"] for c in similar]  # itself left out
    assert [c["cosine"] for c in similar] == sorted((c["cosine"] for c in similar), reverse=True)
    labels = {k: (["Effusion"] if i % 2 else []) for i, k in enumerate(service.registry.labelled_keys)}
    assert all(c["findings"] == labels[c["study_key"]] and c["split"] == "train" for c in similar)
    chosen = service.score(labelled.read_bytes(), age=41, gradcam="true", gradcam_finding="Mass").json()
    assert chosen["gradcam"]["finding"] == "Mass" and chosen["similar_cases"] is None
    # a labelled study that was scored keeps its own fields
    assert tuple(service.rows("SELECT age, sex, labelled FROM studies WHERE study_key = :k", k=body["study_key"])[0])[:2] == (
        41.0,
        "F",
    )


def test_concurrent_requests_share_forward_passes(service, tmp_path):
    images = [phantom_png(tmp_path / f"c{i}.png", seed=200 + i).read_bytes() for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda content: service.score(content, age=50, sex="M", view="PA"), images))
    assert all(a.status_code == 200 for a in answers)
    sizes = [a.json()["batch_size"] for a in answers]
    assert max(sizes) > 1, sizes
    assert len({a.json()["study_key"] for a in answers}) == 8


def wait_for_champion(service, name: str, timeout: float = 120) -> None:
    """Until ``/readyz`` names ``name``: a new champion is loaded in the background (past the
    registry check's TTL, 0.2 s here), then swapped in."""
    import time

    deadline = time.monotonic() + timeout
    while service.get("/readyz", headers={}).json()["checks"].get("champion") != name:
        assert time.monotonic() < deadline, service.get("/readyz", headers={}).text
        time.sleep(0.2)


def test_models_endpoints_and_the_champion_swap(service, tmp_path):

    models = service.get("/v1/models").json()["models"]
    assert [(m["name"], m["status"]) for m in models] == [("net-a", "champion")]
    assert models[0]["test_metrics"]["macro_auroc"] == 0.61 and models[0]["test_metrics"]["macro_auroc_ci"] == [0.55, 0.67]
    champion = service.get("/v1/models/champion").json()
    assert champion["name"] == "net-a" and champion["thresholds"] == dict.fromkeys(champion["thresholds"], 0.5)

    image = phantom_png(tmp_path / "swap.png", seed=9).read_bytes()
    before = service.score(image, age=60).json()
    register_network(service.registry.url, service.registry.home, "net-b", seed=1, image_size=48, threshold=0.0)
    wait_for_champion(service, "net-b")
    after = service.score(image, age=60).json()
    assert after["model"]["name"] == "net-b" and all(after["decisions"].values())  # every threshold is 0
    assert after["probabilities"] != before["probabilities"] and after["study_key"] == before["study_key"]
    assert service.get("/readyz", headers={}).json()["checks"]["champion"] == "net-b"
    history = service.get(f"/v1/studies/{after['study_key']}/predictions").json()["predictions"]
    assert [p["model"]["name"] for p in history] == ["net-b", "net-a"]
    assert [p["model_status"] for p in history] == ["champion", "retired"]
    assert "champion swapped: net-a -> net-b" in service.process.output()


def _nightly_probabilities(service, study_key: str, version_id: int) -> np.ndarray:
    """The nightly path's probabilities ``[14]`` of a stored study: decoded from its file and
    run through :func:`cxrmodel.inference.score_studies` with the version as loaded for scoring."""
    import torch

    from cxrmodel.inference import score_studies
    from cxrmodel.models.loading import load_model_version
    from db import registry, scoring
    from db.engine import session_scope

    torch.set_num_threads(1)
    study_id = service.rows("SELECT id FROM studies WHERE study_key = :k", k=study_key)[0][0]
    with session_scope(service.registry.url) as s:
        model = load_model_version(registry.model_version_files(s, version_id))
        (info,) = scoring.studies_by_id(s, [study_id])
    (batch,) = list(score_studies(model, [info], batch_size=1, device="cpu"))
    return batch.probabilities[0]


def test_tta_and_classical_champions_score_as_nightly(service, tmp_path):
    """Runs after the swap test (module order): each new champion is picked up by the running
    process, and its on-demand scores equal the nightly path's for the same stored study."""

    from cxrmodel.findings import FINDINGS

    image = phantom_png(tmp_path / "kinds.png", seed=11).read_bytes()
    plain = service.score(image, age=64, sex="M", view="PA").json()

    tta_id = register_network(
        service.registry.url, service.registry.home, "net-tta", seed=1, image_size=48, threshold=0.5, tta_hflip=True
    )
    wait_for_champion(service, "net-tta")
    tta = service.score(image, age=64, sex="M", view="PA", similar=2)
    assert tta.status_code == 200, tta.text
    tta = tta.json()
    assert tta["model"] == {"id": tta_id, "name": "net-tta", "kind": "densenet121_fpn"}
    mirrored = [tta["probabilities"][f] for f in FINDINGS]
    assert mirrored == pytest.approx(_nightly_probabilities(service, tta["study_key"], tta_id), abs=1e-5)
    # the same weights as net-b (seed 1, 48 px) without the mirror: flip-averaging did change the scores
    assert max(abs(a - plain["probabilities"][f]) for a, f in zip(mirrored, FINDINGS, strict=True)) > 1e-4
    assert "similar cases unavailable: model version net-tta has no embedding index" in " ".join(tta["notes"])

    labelled = [str(service.registry.images / k) for k in service.registry.labelled_keys]
    classical_id = register_pixel_logistic(service.registry.url, service.registry.home, "pixel-a", labelled, 64, 0.5)
    wait_for_champion(service, "pixel-a")
    body = service.score(image, age=64, sex="M", view="PA", gradcam="true", similar=3)
    assert body.status_code == 200, body.text
    body = body.json()
    assert body["model"] == {"id": classical_id, "name": "pixel-a", "kind": "pixel_logistic"}
    probs = [body["probabilities"][f] for f in FINDINGS]
    assert probs == pytest.approx(_nightly_probabilities(service, body["study_key"], classical_id), abs=1e-6)
    assert len(set(probs)) > 1  # Effusion has a fitted model; the findings without positives a constant
    assert body["gradcam"] is None and body["similar_cases"] is None
    assert any("No Grad-CAM for the pixel_logistic baseline" in n for n in body["notes"])
    assert any("No similar cases for the pixel_logistic model: it has no image embeddings" in n for n in body["notes"])
    stored = service.rows(
        "SELECT p.probability FROM predictions p JOIN studies s ON s.id = p.study_id JOIN scoring_runs r "
        "ON r.id = p.scoring_run_id WHERE s.study_key = :k AND r.model_version_id = :m ORDER BY p.finding",
        k=body["study_key"],
        m=classical_id,
    )
    assert sorted(r[0] for r in stored) == pytest.approx(sorted(probs), abs=1e-6)
