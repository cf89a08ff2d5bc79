"""Training loop (weighted BCE, selection, early stopping, LR schedule, resume). Model artefacts
are tested in ``test_artifacts.py`` and the study dataset in ``test_datasets.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from cxrmodel.config import TrainConfig
from cxrmodel.data.datasets import StudyDataset
from cxrmodel.findings import FINDINGS
from cxrmodel.training.loop import EpochResult, fit, positive_weights, seed_everything

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------
# positive_weights


def test_positive_weights_hand_checked():
    labels = np.zeros((4, 14), dtype=np.uint8)
    labels[0, 0] = 1  # Atelectasis: 1 of 4 -> 3 / 1
    labels[:2, 1] = 1  # Cardiomegaly: 2 of 4 -> 2 / 2
    labels[:, 3] = 1  # Infiltration: 4 of 4 -> 0 / 4
    labels[:3, 4] = 1  # Mass: 3 of 4 -> 1 / 3
    w = positive_weights(labels)
    assert w.dtype == torch.float32 and w.shape == (14,)
    expected = np.ones(14)  # no positives -> 1
    expected[0], expected[1], expected[3], expected[4] = 3.0, 1.0, 0.0, 1.0 / 3.0
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)


def test_positive_weights_clip_and_override():
    labels = np.zeros((100, 14))
    labels[0, FINDINGS.index("Hernia")] = 1  # 99 / 1
    labels[:10, FINDINGS.index("Pneumonia")] = 1  # 90 / 10 = 9
    labels[:50, FINDINGS.index("Effusion")] = 1  # 50 / 50 = 1
    w = positive_weights(labels, max_weight=20.0)
    assert w[FINDINGS.index("Hernia")] == pytest.approx(20.0)
    assert w[FINDINGS.index("Pneumonia")] == pytest.approx(9.0)
    assert w[FINDINGS.index("Effusion")] == pytest.approx(1.0)
    assert w[FINDINGS.index("Mass")] == pytest.approx(1.0)  # no positives
    # the override wins over both the computed value and the clip
    w = positive_weights(labels, overrides={"Pneumonia": 4.5, "Hernia": 50.0}, max_weight=20.0)
    assert w[FINDINGS.index("Pneumonia")] == pytest.approx(4.5)
    assert w[FINDINGS.index("Hernia")] == pytest.approx(50.0)
    assert w[FINDINGS.index("Effusion")] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# fit


class TinyNet(nn.Module):
    """Same interface as the real classifiers: ``forward(image, patient)`` and ``embed``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.image_proj = nn.Linear(4, 8)
        self.patient_proj = nn.Linear(3, 2)
        self.head = nn.Linear(10, 14)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.image_proj(self.conv(image).mean(dim=(2, 3))))

    def forward(self, image: torch.Tensor, patient: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.embed(image), self.patient_proj(patient)], dim=1))


class ConstantNet(nn.Module):
    """Logits that do not depend on its (single) parameter: the metrics can never improve."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.register_buffer("logits", torch.linspace(-2.0, 2.0, 14))

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        return image.flatten(1)[:, :4]

    def forward(self, image: torch.Tensor, patient: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(image), -1) + 0.0 * self.w


def _to_float(t: torch.Tensor) -> torch.Tensor:
    return t.float() / 255.0


def _split(n: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 16, 16), dtype=np.uint8)
    patient = rng.random((n, 3)).astype(np.float32)
    labels = (rng.random((n, 14)) < 0.4).astype(np.float32)
    labels[0], labels[1] = 1, 0  # every class has both values (AUROC defined everywhere)
    return images, patient, labels


@pytest.fixture(scope="module")
def data():
    train = _split(10, 1)  # batches of 4, 4, 2: a ragged last batch
    val = _split(8, 2)
    return train, val


def _loaders(data, batch_size=4):
    (ti, tp, tl), (vi, vp, vl) = data
    train = StudyDataset(ti.__getitem__, tp, tl, transform=_to_float)
    val = StudyDataset(vi.__getitem__, vp, vl, transform=_to_float)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=False),
        DataLoader(val, batch_size=batch_size, shuffle=False),
    )


def _tensors(split):
    images, patient, labels = split
    return torch.from_numpy(images)[:, None].float() / 255.0, torch.from_numpy(patient), torch.from_numpy(labels)


def _config(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, learning_rate=1e-2, device="cpu", augmentation="none")
    base.update(kw)
    return TrainConfig(**base)


def _pos_weight(data) -> torch.Tensor:
    return positive_weights(data[0][2])


def test_fit_reports_every_epoch_with_correct_values(data):
    seed_everything(0)
    model = TinyNet()
    seen: list[EpochResult] = []
    pw = _pos_weight(data)
    result = fit(model, *_loaders(data), _config(), pw, CPU, on_epoch=seen.append)

    assert [r.epoch for r in seen] == [1, 2]
    assert seen == result.history
    assert result.stopped_early is False
    for r in seen:
        assert np.isfinite(r.train_loss) and r.train_loss > 0
        assert np.isfinite(r.val_loss) and r.val_loss > 0
        assert 0 <= r.mean_precision <= 1 and 0 <= r.mean_recall <= 1 and 0 <= r.macro_f1 <= 1
        assert r.mean_auroc is not None and 0 <= r.mean_auroc <= 1
        assert r.learning_rate == pytest.approx(1e-2)
        assert r.seconds > 0 and r.images_per_second > 0

    # the last epoch's validation numbers are those of the model as fit() leaves it
    vx, vp, vy = _tensors(data[1])
    model.eval()
    with torch.no_grad():
        logits = model(vx, vp)
    val_loss = nn.BCEWithLogitsLoss(pos_weight=pw)(logits, vy).item()
    probs = torch.sigmoid(logits).numpy()
    pred, truth = (probs >= 0.5).astype(int), vy.numpy().astype(int)
    last = seen[-1]
    assert last.val_loss == pytest.approx(val_loss, rel=1e-5)
    assert last.macro_f1 == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0))
    assert last.mean_precision == pytest.approx(precision_score(truth, pred, average="macro", zero_division=0))
    assert last.mean_recall == pytest.approx(recall_score(truth, pred, average="macro", zero_division=0))
    assert last.mean_auroc == pytest.approx(np.mean([roc_auc_score(truth[:, j], probs[:, j]) for j in range(14)]))

    # the best state: same keys, a detached copy, the first epoch with the best macro-F1
    assert set(result.best_state) == set(model.state_dict())
    assert result.best_epoch in [r.epoch for r in seen]
    f1s = [r.macro_f1 for r in seen]
    assert result.best_metric == max(f1s)
    assert result.best_epoch == 1 + f1s.index(max(f1s))
    snapshot = {k: v.clone() for k, v in result.best_state.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(snapshot[k], v) for k, v in result.best_state.items())


def test_fit_real_densenet_fpn_at_32px():
    from cxrmodel.data.transforms import eval_transform
    from cxrmodel.models.networks import build_model

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 32, 32), dtype=np.uint8)
    patient = rng.random((16, 3)).astype(np.float32)
    labels = (rng.random((16, 14)) < 0.3).astype(np.float32)
    ds = StudyDataset(images.__getitem__, patient, labels, transform=eval_transform(32))
    seed_everything(0)
    model = build_model("densenet121_fpn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    result = fit(model, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8), _config(batch_size=8),
                 positive_weights(labels), CPU, on_epoch=seen.append)  # fmt: skip
    assert [r.epoch for r in seen] == [1, 2]
    assert all(np.isfinite(r.train_loss) and np.isfinite(r.val_loss) for r in seen)
    assert list(result.best_state) == list(model.state_dict())
    assert result.best_epoch in (1, 2)
    # training moved the weights and the BatchNorm statistics
    assert not torch.equal(model.state_dict()["head.3.weight"], before["head.3.weight"])
    key = "backbone.body.features.norm0.running_mean"
    assert not torch.equal(model.state_dict()[key], before[key])


def test_train_loss_is_the_per_sample_mean(data):
    """With a vanishing learning rate the weights stay put, so epoch 1's train loss is the
    BCE of the initial model over all 10 training samples (batches 4 + 4 + 2 weighted by size)."""
    seed_everything(0)
    model = TinyNet()
    tx, tp, ty = _tensors(data[0])
    pw = _pos_weight(data)
    with torch.no_grad():
        expected = nn.BCEWithLogitsLoss(pos_weight=pw)(model(tx, tp), ty).item()
        batch_means = [
            nn.BCEWithLogitsLoss(pos_weight=pw)(model(tx[i : i + 4], tp[i : i + 4]), ty[i : i + 4]).item() for i in (0, 4, 8)
        ]
    assert abs(np.mean(batch_means) - expected) > 1e-4  # the unweighted mean would be wrong
    result = fit(model, *_loaders(data), _config(epochs=1, learning_rate=1e-12), pw, CPU)
    assert result.history[0].train_loss == pytest.approx(expected, rel=1e-5)


def test_selection_by_mean_auroc(data):
    seed_everything(0)
    result = fit(TinyNet(), *_loaders(data), _config(epochs=3, checkpoint_selection="val_auroc"), _pos_weight(data), CPU)
    aurocs = [r.mean_auroc for r in result.history]
    assert result.best_metric == max(aurocs)
    assert result.best_epoch == 1 + aurocs.index(max(aurocs))


def test_resume_continues_the_interrupted_run(data, tmp_path):
    ckpt = tmp_path / "ckpt" / "last.pt"
    pw = _pos_weight(data)

    seed_everything(0)
    first = fit(TinyNet(), *_loaders(data), _config(epochs=1), pw, CPU, checkpoint_path=ckpt)
    assert ckpt.is_file() and not ckpt.with_name("last.pt.tmp").exists()
    assert len(first.history) == 1

    seed_everything(0)
    straight_model = TinyNet()
    straight = fit(straight_model, *_loaders(data), _config(epochs=2), pw, CPU)

    torch.manual_seed(99)  # a differently initialised model: resume must overwrite it
    resumed_model = TinyNet()
    seen = []
    resumed = fit(
        resumed_model, *_loaders(data), _config(epochs=2), pw, CPU, on_epoch=seen.append, checkpoint_path=ckpt, resume=True
    )
    assert len(resumed.history) == 2
    assert resumed.history[0] == first.history[0]
    assert [r.epoch for r in seen] == [2]  # only the new epoch is reported
    # identical to training two epochs in one go
    a, b = resumed.history[1], straight.history[1]
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
    assert a.val_loss == pytest.approx(b.val_loss, rel=1e-6)
    assert a.macro_f1 == pytest.approx(b.macro_f1)
    for k, v in straight_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[k], v)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2


def test_resume_without_checkpoint_starts_fresh(data, tmp_path):
    seed_everything(0)
    result = fit(TinyNet(), *_loaders(data), _config(epochs=1), _pos_weight(data), CPU,
                 checkpoint_path=tmp_path / "absent.pt", resume=True)  # fmt: skip
    assert [r.epoch for r in result.history] == [1]


@pytest.mark.parametrize("patience, epochs_run", [(1, 2), (2, 3)])
def test_early_stopping_when_metric_cannot_improve(data, patience, epochs_run):
    seen = []
    result = fit(ConstantNet(), *_loaders(data), _config(epochs=6, early_stopping_patience=patience),
                 _pos_weight(data), CPU, on_epoch=seen.append)  # fmt: skip
    assert result.stopped_early is True
    assert [r.epoch for r in result.history] == list(range(1, epochs_run + 1))
    assert len(seen) == epochs_run
    assert result.best_epoch == 1
    assert len({r.macro_f1 for r in result.history}) == 1  # constant, as constructed


def test_no_early_stopping_without_patience(data):
    result = fit(ConstantNet(), *_loaders(data), _config(epochs=3), _pos_weight(data), CPU)
    assert result.stopped_early is False
    assert len(result.history) == 3


def test_early_stopping_counter_survives_resume(data, tmp_path):
    """Stopping after a resume happens at the same epoch as in an uninterrupted run."""
    ckpt = tmp_path / "es.pt"
    pw = _pos_weight(data)
    straight = fit(ConstantNet(), *_loaders(data), _config(epochs=6, early_stopping_patience=2), pw, CPU)
    assert len(straight.history) == 3
    fit(ConstantNet(), *_loaders(data), _config(epochs=2, early_stopping_patience=2), pw, CPU, checkpoint_path=ckpt)
    resumed = fit(ConstantNet(), *_loaders(data), _config(epochs=6, early_stopping_patience=2), pw, CPU,
                  checkpoint_path=ckpt, resume=True)  # fmt: skip
    assert resumed.stopped_early is True
    assert len(resumed.history) == 3


def test_reduce_lr_on_plateau_halves_lr(data):
    # val loss is exactly constant, so every epoch after the first is "no improvement".
    # EpochResult.learning_rate is read after scheduler.step(val_loss), i.e. the rate the
    # next epoch will use.
    result = fit(ConstantNet(), *_loaders(data), _config(epochs=4, learning_rate=1e-3, scheduler_patience=0),
                 _pos_weight(data), CPU)  # fmt: skip
    lrs = [r.learning_rate for r in result.history]
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])
    assert len({r.val_loss for r in result.history}) == 1

    result = fit(ConstantNet(), *_loaders(data), _config(epochs=5, learning_rate=1e-3, scheduler_patience=1,
                 scheduler_factor=0.1), _pos_weight(data), CPU)  # fmt: skip
    lrs = [r.learning_rate for r in result.history]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
