"""Batch scoring straight from source files: bad studies become failures, never abort a run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cxrmodel.data.imaging import read_grayscale, resize_square
from cxrmodel.data.transforms import eval_transform
from cxrmodel.inference import ScoringDataset, ScoringItem, score_batches
from cxrmodel.models.networks import build_model

SIZE = 32
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("densenet121_fpn").eval()


def _png(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(64, 64), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


@pytest.fixture
def studies(tmp_path):
    good1 = _png(tmp_path / "good1.png", 1)
    good2 = _png(tmp_path / "good2.png", 2)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    whole = _png(tmp_path / "whole.png", 3).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    no_meta = _png(tmp_path / "no_meta.png", 4)
    items = [
        ScoringItem(101, str(good1), (0.5, 0.0, 1.0)),
        ScoringItem(102, str(tmp_path / "missing.png"), (0.4, 1.0, 0.0)),
        ScoringItem(103, str(good2), (0.2, 1.0, 0.0)),
        ScoringItem(104, str(empty), (0.3, 0.0, 0.0)),
        # the second batch of 4 holds only failures
        ScoringItem(105, str(truncated), (0.6, 0.0, 1.0)),
        ScoringItem(106, str(no_meta), None),
    ]
    return items


def _score(model, items, batch_size=4):
    dataset = ScoringDataset(items, SIZE, eval_transform(SIZE))
    return list(score_batches(model, dataset, batch_size=batch_size, device=CPU))


def test_bad_studies_fail_alone_and_nothing_is_lost(model, studies):
    batches = _score(model, studies)
    assert len(batches) == 2

    scored_ids = [i for b in batches for i in b.study_ids]
    assert scored_ids == [101, 103]
    probs = np.concatenate([b.probabilities for b in batches])
    assert probs.shape == (2, 14)
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()

    failures: dict[int, str] = {}
    for b in batches:
        assert not set(b.failures) & set(failures)  # each failure reported once
        assert not set(b.failures) & set(b.study_ids)
        failures.update(b.failures)
    assert set(failures) == {102, 104, 105, 106}
    assert "missing file" in failures[102]
    assert "empty file" in failures[104]
    assert "corrupt or truncated" in failures[105]
    assert "missing metadata" in failures[106]
    assert set(scored_ids) | set(failures) == {item.study_id for item in studies}

    # the second batch had no decodable study: an empty [0, 14] array, not an exception
    assert batches[1].study_ids == []
    assert batches[1].probabilities.shape == (0, 14)
    assert set(batches[1].failures) == {105, 106}


def test_probabilities_match_a_direct_forward_pass(model, studies):
    batches = _score(model, studies)
    good = [studies[0], studies[2]]
    transform = eval_transform(SIZE)
    images = torch.stack([transform(torch.from_numpy(resize_square(read_grayscale(i.image_path), SIZE))[None]) for i in good])
    patient = torch.tensor([i.patient for i in good], dtype=torch.float32)
    with torch.no_grad():
        expected = torch.sigmoid(model(images, patient)).numpy()
    np.testing.assert_allclose(batches[0].probabilities, expected, rtol=1e-5, atol=1e-6)
    # the good studies' scores do not depend on which bad studies share their batch
    alone = _score(model, good, batch_size=2)
    np.testing.assert_allclose(alone[0].probabilities, expected, rtol=1e-5, atol=1e-6)
    assert alone[0].failures == {}


def test_batch_of_only_failures(model, tmp_path):
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    items = [ScoringItem(1, str(tmp_path / "nope.png"), (0.1, 0.0, 0.0)), ScoringItem(2, str(empty), None)]
    batches = _score(model, items)
    assert len(batches) == 1
    assert batches[0].study_ids == []
    assert batches[0].probabilities.shape == (0, 14)
    assert set(batches[0].failures) == {1, 2}


def test_scoring_dataset_items(studies):
    ds = ScoringDataset(studies, SIZE, eval_transform(SIZE))
    assert len(ds) == 6
    image, patient, sid, error = ds[0]
    assert error is None and sid == 101
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    torch.testing.assert_close(patient, torch.tensor([0.5, 0.0, 1.0]))
    image, patient, sid, error = ds[5]
    assert (image, patient, sid) == (None, None, 106) and "missing metadata" in error


def test_decode_threads_and_spawned_workers_give_the_same_batches(model, studies):
    dataset = ScoringDataset(studies, SIZE, eval_transform(SIZE))
    reference = _score(model, studies)
    for kwargs in ({"decode_threads": 1}, {"decode_threads": 3}, {"num_workers": 1, "prefetch_factor": 1}):
        batches = list(score_batches(model, dataset, batch_size=4, device=CPU, **kwargs))
        assert [b.study_ids for b in batches] == [b.study_ids for b in reference], kwargs
        assert [b.failures for b in batches] == [b.failures for b in reference], kwargs
        for got, want in zip(batches, reference, strict=True):
            np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=1e-5, atol=1e-6)


class _Recorder(torch.nn.Module):
    """Wraps the model and notes, at each forward, how many images are being decoded."""

    def __init__(self, inner, dataset):
        super().__init__()
        self.inner, self.dataset, self.busy_during_forward = inner, dataset, []

    def forward(self, images, patient):
        self.busy_during_forward.append(self.dataset.busy)
        return self.inner(images, patient)


class _CountingDataset(ScoringDataset):
    def __init__(self, *args):
        super().__init__(*args)
        self.busy, self.decoded = 0, []
        self._lock = threading.Lock()

    def __getitem__(self, i):
        with self._lock:
            self.busy += 1
        try:
            time.sleep(0.01)
            return super().__getitem__(i)
        finally:
            with self._lock:
                self.busy -= 1
                self.decoded.append(i)


def test_next_batch_decodes_while_the_caller_works_never_during_the_model(model, tmp_path):
    items = [ScoringItem(i, str(_png(tmp_path / f"{i}.png", i)), (0.5, 0.0, 0.0)) for i in range(10)]
    dataset = _CountingDataset(items, SIZE, eval_transform(SIZE))
    recorder = _Recorder(model, dataset)
    seen_when_yielded = []
    for batch in score_batches(recorder, dataset, batch_size=4, device=CPU, decode_threads=2):
        seen_when_yielded.append(batch.study_ids)
        # the caller's "database write": the next batch decodes meanwhile
        expected = min(len(items), 4 * len(seen_when_yielded) + 4)
        deadline = time.monotonic() + 10
        while len(dataset.decoded) < expected and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(dataset.decoded) == expected
    assert seen_when_yielded == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert recorder.busy_during_forward == [0, 0, 0]
    assert sorted(dataset.decoded) == list(range(10))


def test_abandoned_scoring_stops_decoding(model, tmp_path):
    items = [ScoringItem(i, str(_png(tmp_path / f"{i}.png", i)), (0.5, 0.0, 0.0)) for i in range(12)]
    dataset = _CountingDataset(items, SIZE, eval_transform(SIZE))
    gen = score_batches(model, dataset, batch_size=4, device=CPU, decode_threads=1)
    assert next(gen).study_ids == [0, 1, 2, 3]
    gen.close()  # e.g. the caller's database write raised
    decoded = len(dataset.decoded)
    assert decoded <= 8 and dataset.busy == 0  # at most the batch submitted before the close
    time.sleep(0.1)
    assert len(dataset.decoded) == decoded
