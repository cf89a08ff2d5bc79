"""Training-recipe options: AdamW, the per-batch cosine schedule with warm-up, the weight
average (EMA), the rule for the kept epoch, augmentation strengths, the small DenseNet backbone
and horizontal-flip test-time augmentation where a version predicts (evaluation and scoring).
Old recipes keep their behaviour."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

import configs
from cxrmodel.config import TrainConfig, load_pipeline_config
from cxrmodel.data.datasets import StudyDataset
from cxrmodel.data.metadata import AgeScaler
from cxrmodel.data.transforms import augmentation_transform, eval_transform, light_train_transform, train_transform
from cxrmodel.inference import score_studies
from cxrmodel.models.artifacts import save_state_dict
from cxrmodel.models.loading import ModelVersionFiles, load_model_version
from cxrmodel.models.networks import build_model, count_parameters, network_probabilities
from cxrmodel.training.loop import fit, positive_weights, predict_loader, seed_everything
from cxrmodel.training.recipe import WARMUP_START_FACTOR, LearningRateSchedule, make_optimizer

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 + 3, 14)

    def forward(self, image: torch.Tensor, patient: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.relu(self.conv(image)).mean(dim=(2, 3)), patient], dim=1))


def _split(n: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 16, 16), dtype=np.uint8)
    patient = rng.random((n, 3)).astype(np.float32)
    labels = (rng.random((n, 14)) < 0.4).astype(np.float32)
    labels[0], labels[1] = 1, 0
    return images, patient, labels


def _loaders(batch_size: int = 4):
    def dataset(split):
        images, patient, labels = split
        return StudyDataset(images.__getitem__, patient, labels, transform=lambda t: t.float() / 255.0)

    train, val = _split(12, 1), _split(8, 2)
    return (
        DataLoader(dataset(train), batch_size=batch_size, shuffle=False),
        DataLoader(dataset(val), batch_size=batch_size, shuffle=False),
        positive_weights(train[2]),
    )


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 4, "learning_rate": 1e-2, "device": "cpu", "augmentation": "none", **kw})


# --------------------------------------------------------------------------------------
# Defaults and old recipes


def test_defaults_are_the_old_behaviour():
    config = TrainConfig()
    assert (config.optimizer, config.schedule, config.warmup_epochs, config.ema_decay) == ("adam", "plateau", 0, None)
    assert (config.checkpoint_selection, config.augmentation, config.backbone, config.tta_hflip) == (
        "macro_f1",
        "seed004",
        "densenet121",
        False,
    )
    # the older names still choose, with a warning naming the new one
    with pytest.warns(FutureWarning, match="'selection_metric' is replaced by 'checkpoint_selection'"):
        assert TrainConfig(selection_metric="mean_auroc").checkpoint_selection == "val_auroc"
    with pytest.warns(FutureWarning, match="'augment' is replaced by 'augmentation'"):
        assert TrainConfig(augment=False).augmentation == "none"
    with pytest.warns(FutureWarning):  # both given (a version's stored recipe): the new name wins
        assert TrainConfig(augment=True, augmentation="light").augmentation == "light"
    assert not hasattr(TrainConfig(), "augment") and not hasattr(TrainConfig(), "selection_metric")
    # a stored recipe of an older version (both names, older fields missing) validates to the same
    old = {k: v for k, v in TrainConfig().model_dump(mode="json").items() if k not in ("optimizer", "schedule", "backbone")}
    old.pop("checkpoint_selection"), old.pop("augmentation"), old.pop("ema_decay"), old.pop("tta_hflip")
    old.update(selection_metric="macro_f1", augment=True)
    with pytest.warns(FutureWarning):
        assert TrainConfig.model_validate(old) == TrainConfig()
    assert TrainConfig.model_validate(TrainConfig(checkpoint_selection="last").model_dump(mode="json")) == TrainConfig(
        checkpoint_selection="last"
    )


def test_recipe_files_validate():
    demo_config = load_pipeline_config(configs.shipped("demo"))
    demo = demo_config.train
    # the demo keeps the best epoch by validation AUROC
    assert (demo.optimizer, demo.schedule, demo.checkpoint_selection, demo.backbone) == (
        "adam",
        "plateau",
        "val_auroc",
        "densenet121",
    )
    assert demo_config.synth.n_studies * (1 - demo_config.data.test_fraction) * 0.2 >= 200  # ranked on validation
    small = load_pipeline_config(configs.shipped("small-real")).train
    assert small.backbone == "densenet_small" and small.optimizer == "adamw" and small.schedule == "cosine"
    assert small.checkpoint_selection in ("last", "val_loss")  # never a chance peak of a small split
    assert small.ema_decay is not None and small.tta_hflip is True


def test_small_backbone_refuses_imagenet_weights():
    with pytest.raises(ValueError, match="densenet121 backbone only"):
        TrainConfig(backbone="densenet_small", weights="imagenet")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model("densenet121_fpn", backbone="densenet_small", weights="imagenet")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("densenet121_fpn", backbone="resnet")


# --------------------------------------------------------------------------------------
# Optimiser and schedule


def test_adamw_decouples_weight_decay_from_adam():
    """With a zero gradient Adam's L2 term becomes the gradient (a full normalised step of
    ``lr``), while AdamW only shrinks the weight by ``lr * weight_decay``."""
    for name, expected in (("adamw", 2.0 * (1 - 0.1 * 0.5)), ("adam", 2.0 - 0.1)):
        weight = nn.Parameter(torch.tensor([2.0]))
        optimizer = make_optimizer([weight], TrainConfig(optimizer=name, learning_rate=0.1, weight_decay=0.5))
        weight.grad = torch.zeros(1)
        optimizer.step()
        assert weight.item() == pytest.approx(expected, rel=1e-5), name


def test_cosine_schedule_per_batch_with_warmup():
    weight = nn.Parameter(torch.zeros(1))
    lr, epochs, batches, warmup = 0.1, 3, 4, 1
    optimizer = torch.optim.SGD([weight], lr=lr)
    schedule = LearningRateSchedule(optimizer, TrainConfig(schedule="cosine", warmup_epochs=warmup, epochs=epochs), batches)
    seen = [optimizer.param_groups[0]["lr"]]
    for _ in range(epochs * batches):
        optimizer.step()
        schedule.after_batch()
        schedule.after_epoch(1.0)  # ignored by a per-batch schedule
        seen.append(optimizer.param_groups[0]["lr"])
    w, total = warmup * batches, epochs * batches
    expected = [lr * (WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * k / w) for k in range(w)]
    expected += [lr * 0.5 * (1 + math.cos(math.pi * (k - w) / (total - w))) for k in range(w, total + 1)]
    assert seen == pytest.approx(expected, abs=1e-9)


def test_fit_with_cosine_ends_at_zero_and_adamw_trains():
    train, val, pw = _loaders()
    seed_everything(0)
    result = fit(
        TinyNet(), train, val, _config(optimizer="adamw", weight_decay=0.01, schedule="cosine", warmup_epochs=1), pw, CPU
    )
    lrs = [r.learning_rate for r in result.history]  # read at each epoch's end: after 3, 6, 9 batches
    assert lrs[0] == pytest.approx(1e-2)  # the warm-up just finished
    assert lrs[1] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lrs[2] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------
# Weight average and the kept epoch


def test_ema_weights_are_validated_and_kept():
    """The kept state is the EMA of the weights after every optimiser step (first step copied),
    computed here by hand from the weights each training forward pass sees."""
    train, val, pw = _loaders()
    seed_everything(0)
    model = TinyNet()
    steps: list[dict[str, torch.Tensor]] = []

    def record(module, _inputs):
        if module is model and module.training:
            steps.append({k: v.detach().clone() for k, v in module.state_dict().items()})

    model.register_forward_pre_hook(record)
    decay = 0.8
    result = fit(model, train, val, _config(ema_decay=decay, checkpoint_selection="last"), pw, CPU)
    after_each_step = steps[1:] + [{k: v.detach().clone() for k, v in model.state_dict().items()}]
    assert len(after_each_step) == 3 * 3
    ema = dict(after_each_step[0])
    for state in after_each_step[1:]:
        ema = {k: decay * ema[k] + (1 - decay) * state[k] for k in ema}
    assert result.best_epoch == 3
    for key, value in ema.items():
        torch.testing.assert_close(result.best_state[key], value)
        assert not torch.allclose(result.best_state[key], model.state_dict()[key])  # not the raw weights
    # the last epoch's validation loss is that of the averaged weights
    averaged = TinyNet()
    averaged.load_state_dict(result.best_state)
    _, _, val_loss = predict_loader(averaged, val, CPU, nn.BCEWithLogitsLoss(pos_weight=pw))
    assert result.history[-1].val_loss == pytest.approx(val_loss, rel=1e-6)


@pytest.mark.parametrize("rule", ["last", "val_loss", "val_auroc", "macro_f1"])
def test_checkpoint_selection_rules(rule):
    train, val, pw = _loaders()
    seed_everything(0)
    result = fit(TinyNet(), train, val, _config(epochs=4, learning_rate=5e-2, checkpoint_selection=rule), pw, CPU)
    history = result.history
    losses, aurocs, f1s = [r.val_loss for r in history], [r.mean_auroc for r in history], [r.macro_f1 for r in history]
    expected_epoch, expected_value = {
        "last": (4, aurocs[-1]),
        "val_loss": (1 + int(np.argmin(losses)), min(losses)),
        "val_auroc": (1 + int(np.argmax(aurocs)), max(aurocs)),
        "macro_f1": (1 + int(np.argmax(f1s)), max(f1s)),
    }[rule]
    assert result.best_epoch == expected_epoch
    assert result.best_metric == pytest.approx(expected_value)


def test_resume_with_cosine_and_ema_matches_a_straight_run(tmp_path):
    config = {"schedule": "cosine", "warmup_epochs": 1, "ema_decay": 0.9, "checkpoint_selection": "last", "optimizer": "adamw"}
    train, val, pw = _loaders()
    seed_everything(0)
    straight = fit(TinyNet(), train, val, _config(**config), pw, CPU)
    seed_everything(0)
    ckpt = tmp_path / "checkpoint.pt"
    fit(TinyNet(), train, val, _config(**config), pw, CPU, checkpoint_path=ckpt)  # writes epoch 3
    state = torch.load(ckpt, weights_only=False)
    assert state["ema"] is not None and state["epoch"] == 3
    # interrupted after epoch 2: rerun 2 epochs of a 3-epoch schedule is not the same schedule,
    # so interrupt for real by training the 3-epoch recipe with an on_epoch that stops it
    seed_everything(0)

    class Stop(Exception):
        pass

    def stop_after_two(result):
        if result.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(TinyNet(), train, val, _config(**config), pw, CPU, on_epoch=stop_after_two, checkpoint_path=ckpt)
    resumed = fit(TinyNet(), train, val, _config(**config), pw, CPU, checkpoint_path=ckpt, resume=True)
    assert [r.learning_rate for r in resumed.history] == pytest.approx([r.learning_rate for r in straight.history])
    assert resumed.history[-1].val_loss == pytest.approx(straight.history[-1].val_loss, rel=1e-6)
    for key, value in straight.best_state.items():
        torch.testing.assert_close(resumed.best_state[key], value)


# --------------------------------------------------------------------------------------
# Augmentation strengths and the small backbone


def test_augmentation_strengths():
    ramp = np.add.outer(np.arange(64), np.arange(64)) * 2  # smooth: a shift moves values a little
    image = torch.from_numpy(ramp.astype(np.uint8))[None]
    reference = eval_transform(64)(image)
    assert torch.equal(augmentation_transform("none", 64)(image), reference)
    for strength, builder in (("light", light_train_transform), ("seed004", train_transform)):
        out = augmentation_transform(strength, 64)(image)
        assert out.shape == (3, 64, 64) and repr(augmentation_transform(strength, 64)) == repr(builder(64))
        assert not torch.equal(out, reference)
    # the light one moves pixels less than the seed's
    torch.manual_seed(0)
    light = np.mean([float((light_train_transform(64)(image) - reference).abs().mean()) for _ in range(20)])
    torch.manual_seed(0)
    strong = np.mean([float((train_transform(64)(image) - reference).abs().mean()) for _ in range(20)])
    assert light < strong
    with pytest.raises(ValueError, match="unknown augmentation"):
        augmentation_transform("heavy", 64)


def test_small_backbone_network():
    model = build_model("densenet121_fpn", backbone="densenet_small").eval()
    assert [ch for _, ch in model.backbone.levels.values()] == [128, 256, 256]
    assert count_parameters(model) < count_parameters(build_model("densenet121_fpn")) / 4
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), torch.zeros(2, 3))
        embedding = model.embed(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 14) and embedding.shape == (2, 256)
    chexnet = build_model("densenet121", backbone="densenet_small")
    assert chexnet.classifier.in_features == 256


# --------------------------------------------------------------------------------------
# Test-time augmentation, stored with the version and used in evaluation and scoring


@dataclass
class _Study:
    id: int
    image_path: str
    age: float | None
    sex: str | None
    view: str | None


def _version(tmp_path: Path, tta: bool | None, size: int = 32):
    torch.manual_seed(0)
    network = build_model("densenet121_fpn", backbone="densenet_small").eval()
    path = tmp_path / f"model-{tta}.safetensors"
    sha = save_state_dict(network.state_dict(), path)
    config = {"image_size": size, "age_scaler": AgeScaler(20.0, 80.0, 50.0).to_dict()}
    if tta is not None:
        config["train"] = TrainConfig(backbone="densenet_small", tta_hflip=tta).model_dump(mode="json")
    files = ModelVersionFiles(1, "v", "densenet121_fpn", str(path), sha, config)
    return network, files


def _images(tmp_path: Path, n: int = 3, size: int = 32) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        key = f"{i:08d}_000.png"
        pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
        pixels[:, : size // 2] //= 3  # not mirror-symmetric
        Image.fromarray(pixels).save(folder / key)
        rows.append({"study_key": key, "image_path": str(folder / key), "content_hash": None,
                     "age": 30.0 + 10 * i, "sex": "F" if i % 2 else "M", "view": "PA"})  # fmt: skip
    return pd.DataFrame(rows)


def test_tta_hflip_in_evaluation_and_scoring(tmp_path):
    frame = _images(tmp_path)
    network, files = _version(tmp_path, tta=True)
    loaded = load_model_version(files)
    assert loaded.tta_hflip is True
    # by hand: the same pixels the image cache and the decoder give, through the eval transform
    from cxrmodel.data.imaging import read_grayscale, resize_square

    images = torch.stack(
        [eval_transform(32)(torch.from_numpy(resize_square(read_grayscale(p), 32))[None]) for p in frame["image_path"]]
    )
    from cxrmodel.data.metadata import patient_features

    patient = torch.from_numpy(patient_features(frame, AgeScaler(20.0, 80.0, 50.0)))
    with torch.no_grad():
        plain = torch.sigmoid(network(images, patient)).numpy()
        mirrored = torch.sigmoid(network(torch.flip(images, dims=[-1]), patient)).numpy()
        assert np.allclose(network_probabilities(network, images, patient, tta_hflip=True).numpy(), (plain + mirrored) / 2)
    assert not np.allclose(plain, mirrored, atol=1e-4)

    evaluated = loaded.predict_frame(frame, tmp_path / "cache", device="cpu")
    np.testing.assert_allclose(evaluated, (plain + mirrored) / 2, atol=1e-5)
    studies = [
        _Study(i, p, a, s, v)
        for i, (p, a, s, v) in enumerate(frame[["image_path", "age", "sex", "view"]].itertuples(index=False))
    ]
    scored = np.concatenate([b.probabilities for b in score_studies(loaded, studies, batch_size=2, device="cpu")])
    np.testing.assert_allclose(scored, (plain + mirrored) / 2, atol=1e-5)

    # the same weights without TTA in the recipe predict the plain image
    _, files_plain = _version(tmp_path, tta=False)
    np.testing.assert_allclose(
        load_model_version(files_plain).predict_frame(frame, tmp_path / "cache", device="cpu"), plain, atol=1e-5
    )


def test_version_without_recipe_loads_densenet121_without_tta(tmp_path):
    network = build_model("densenet121_fpn").eval()
    path = tmp_path / "old.safetensors"
    sha = save_state_dict(network.state_dict(), path)
    files = ModelVersionFiles(
        1, "old", "densenet121_fpn", str(path), sha, {"image_size": 32, "age_scaler": AgeScaler(20.0, 80.0, 50.0).to_dict()}
    )
    loaded = load_model_version(files)
    assert loaded.tta_hflip is False
    assert count_parameters(loaded.network) == count_parameters(network)
