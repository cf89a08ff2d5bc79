"""Pieces of the on-demand service checked on their own: key comparison, study-key validation,
type sniffing, the settings' list parsing, and the one-pass forward (probabilities and
embeddings) against the network's own ``forward`` and ``embed``."""

from __future__ import annotations

import pytest

from api.errors import Refusal
from api.security import key_matches, valid_study_key
from api.uploads import ImageKind, sniff_kind


def test_key_matches_any_configured_key_and_nothing_else():
    keys = ["alpha-key", "beta-key"]
    assert key_matches("beta-key", keys) and key_matches("alpha-key", keys)
    for given in (None, "", "alpha", "alpha-key ", "ALPHA-KEY", "beta-keyx"):
        assert not key_matches(given, keys)
    assert not key_matches("alpha-key", [])


def test_study_keys_are_validated_without_echo():
    for good in ("00000001_000.png", "sha256-" + "a" * 64, "in.dcm"):
        assert valid_study_key(good) == good
    for bad in ("", "../x", "a/b", "<script>", ".hidden", "a" * 129, "x y"):
        with pytest.raises(Refusal) as refused:
            valid_study_key(bad)
        assert refused.value.status == 422 and (not bad or bad not in refused.value.reason)


def test_type_comes_from_the_magic_bytes():
    assert sniff_kind(b"\x89PNG\r\n\x1a\n" + b"\0" * 8) is ImageKind.PNG
    assert sniff_kind(b"\xff\xd8\xff\xe0" + b"\0" * 8) is ImageKind.JPEG
    assert sniff_kind(b"\0" * 128 + b"DICM") is ImageKind.DICOM
    for other in (b"GIF89a", b"<svg", b"%PDF-1.7", b"\0" * 132):
        with pytest.raises(Refusal) as refused:
            sniff_kind(other)
        assert refused.value.status == 415


def test_settings_read_key_and_origin_lists(monkeypatch):
    from deployments.settings import Settings

    monkeypatch.setenv("CXR_API_KEYS", "k1, k2,,")
    monkeypatch.setenv("CXR_API_CORS_ORIGINS", '["https://a.example"]')
    settings = Settings()
    assert settings.api_keys == ["k1", "k2"] and settings.api_cors_origins == ["https://a.example"]
    assert "k1" not in repr(settings)


def test_one_pass_gives_the_forward_and_the_embedding(one_torch_thread):
    import torch

    from cxrmodel.data.metadata import AgeScaler
    from cxrmodel.models.loading import LoadedModel
    from cxrmodel.models.networks import build_model
    from cxrmodel.serving import patient_vector, predict_with_embeddings, ranked_findings

    torch.manual_seed(0)
    network = build_model("densenet121_fpn").eval()
    loaded = LoadedModel(1, "densenet121_fpn", network, 32, AgeScaler(20.0, 80.0, 50.0))
    images = torch.randn(3, 3, 32, 32)
    patient = torch.stack([patient_vector(loaded, a, s, v) for a, s, v in ((80, "F", "AP"), (None, None, "PA"), (20, "M", None))])
    assert patient.tolist() == [[1.0, 1.0, 1.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]
    probs, embeddings = predict_with_embeddings(loaded, images, patient)
    with torch.no_grad():
        assert probs == pytest.approx(torch.sigmoid(network(images, patient)).numpy(), abs=1e-6)
        assert embeddings == pytest.approx(network.embed(images).numpy(), abs=1e-6)
    ranked = ranked_findings(probs[0], tuple([0.5] * 14))
    assert [r.probability for r in ranked] == sorted(probs[0].tolist(), reverse=True)
    assert all(r.decision == (r.probability >= 0.5) for r in ranked)

    # a flip-averaging version: the mean over the image and its mirror, as nightly predict_batch
    mirrored = LoadedModel(1, "densenet121_fpn", network, 32, AgeScaler(20.0, 80.0, 50.0), tta_hflip=True)
    tta_probs, tta_embeddings = predict_with_embeddings(mirrored, images, patient)
    with torch.no_grad():
        flipped = torch.sigmoid(network(torch.flip(images, dims=[-1]), patient)).numpy()
    assert tta_probs == pytest.approx((probs + flipped) / 2, abs=1e-6)
    assert tta_probs == pytest.approx(mirrored.predict_batch(images, patient, torch.device("cpu")), abs=1e-7)
    assert tta_embeddings == pytest.approx(embeddings, abs=1e-6)
