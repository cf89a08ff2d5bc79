"""Data-parallel training of seed 004's network (PyTorch DDP), one process per device.

The same training run as the ``train-network`` task (:func:`tasks.training.train_network`),
spread over several processes: the same data preparation
(:func:`cxrmodel.training.data.prepare_training_data`), recipe, ``training_runs`` and
``epoch_metrics`` rows, artefacts in ``CXR_HOME/models/<name>/`` and candidate model version.

Launch
------
Single node, N GPUs (NCCL, one process per GPU; ``--standalone`` picks a free rendezvous port)::

    torchrun --standalone --nproc-per-node N -m flows.train_ddp --config configs/demo.yaml \\
        [--home DIR] [--database-url URL] [--epochs E]

CPU, e.g. to try it out or in tests (gloo; ``--device cpu`` forces CPU even where CUDA exists)::

    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29511 \\
        -m flows.train_ddp --config configs/demo.yaml --device cpu

Without torchrun (``python -m flows.train_ddp ...``) it trains in one process, no process group.
``--home``/``--database-url`` default to ``CXR_HOME``/``CXR_DATABASE_URL`` like every flow.
Refresh the data first (``cxr refresh``): this reads labelled studies and the image cache.
The next stages (``cxr calibrate``, ``cxr evaluate``) take the printed model version id.

Who does what
-------------
* Rank 0 alone talks to the database: it resolves the home folder and database URL, reads the
  labelled studies once and broadcasts them (with the home folder) to the other ranks, so every
  rank trains on the same snapshot even if a refresh lands meanwhile. It alone writes: the
  ``training_runs`` row, one ``epoch_metrics`` row per epoch, ``train.log``, the checkpoint and
  the artefacts, and the model version (all through the helpers of :mod:`tasks.training`). The
  other ranks never touch the database nor ``CXR_HOME/models``; they read the image cache.
* Only rank 0 loads pretrained backbone weights (``TrainConfig.weights``); DDP copies rank 0's
  parameters to every rank when it wraps the model.
* ``TrainConfig.batch_size`` is **per process**: the global batch is ``N x batch_size`` (scale
  ``learning_rate`` yourself if you want the single-process recipe's effective step size).
* Each rank trains on a disjoint shard of the (balanced) training rows (``DistributedSampler``,
  reshuffled every epoch); rank 0 evaluates the whole validation split and shares the result,
  so scheduler, best-epoch and early-stopping decisions are identical everywhere (see
  :mod:`cxrmodel.training.distributed`).
* Prefect: this is a plain script, not a flow. Launched from inside a flow run (a subprocess
  that inherits ``PREFECT__FLOW_RUN_ID`` and the API settings) the training run records that
  flow run's id and the live ``cxr-training-epochs`` table artifact is written.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from torch.utils.data import DataLoader

from cxrmodel.config import DataConfig, TrainConfig, load_pipeline_config
from cxrmodel.io import MissingInputError
from cxrmodel.layout import HomeLayout
from cxrmodel.models.networks import build_model
from cxrmodel.training.data import prepare_training_data, version_name
from cxrmodel.training.distributed import (
    DistContext,
    barrier,
    broadcast_object,
    cleanup,
    distributed_loader,
    init_from_env,
    wrap_ddp,
)
from cxrmodel.training.loop import fit, seed_everything
from deployments.settings import Settings, resolve_config
from flows.params import resolve
from tasks.common import flow_run_id, labelled_frame, model_dir, run_logger
from tasks.training import epoch_recorder, fail_training_run, open_training_run, register_trained_model

log = logging.getLogger("cxr.ddp")


def _load_shared_inputs(ctx: DistContext, home: str | None, database_url: str | None):
    """Rank 0: ``(home, database URL, labelled frame)`` from the settings and the database.
    Other ranks: ``(home, None, the same frame)`` received from rank 0, never the database."""
    payload, url = None, None
    if ctx.is_main:
        try:
            home_path, url = resolve(home, database_url)
            payload = {"home": str(home_path), "frame": labelled_frame(url)}
        except Exception as exc:
            broadcast_object({"error": f"{type(exc).__name__}: {exc}"})  # release the other ranks
            raise
    payload = broadcast_object(payload)
    if "error" in payload:
        raise RuntimeError(f"rank 0 could not load the training data: {payload['error']}")
    return Path(payload["home"]), url, payload["frame"]


def train_distributed(
    ctx: DistContext, data: DataConfig, train: TrainConfig, home: str | None = None, database_url: str | None = None
) -> int | None:
    """Run one data-parallel training run on every rank of ``ctx``. Returns the registered
    model version's id on rank 0 and None on the other ranks."""
    home_path, url, frame = _load_shared_inputs(ctx, home, database_url)
    seed_everything(train.seed)
    prepared = prepare_training_data(frame, HomeLayout(home_path).cache, data, train)
    # the other ranks get rank 0's weights from DDP
    model = build_model(train.architecture, **train.model_kwargs(with_weights=ctx.is_main))
    seed_everything(train.seed + ctx.rank)  # each rank its own augmentation and dropout stream
    ddp_model = wrap_ddp(model, ctx)

    pin = ctx.device.type == "cuda"
    per_rank = math.ceil(len(prepared.train_dataset) / ctx.world_size)
    train_loader = distributed_loader(
        prepared.train_dataset,
        train.batch_size,
        ctx,
        shuffle=True,
        seed=train.seed,
        num_workers=train.num_workers,
        pin_memory=pin,
        drop_last=per_rank > train.batch_size,
    )
    # The whole validation split, no sampler: fit() evaluates it on rank 0 only.
    val_loader = DataLoader(
        prepared.val_dataset,
        batch_size=max(train.batch_size, 64),
        shuffle=False,
        num_workers=train.num_workers if ctx.is_main else 0,
        pin_memory=pin,
    )
    log.info(
        "rank %d/%d on %s: %d training rows (%d before balancing %r), %d per rank, %d validation rows",
        ctx.rank,
        ctx.world_size,
        ctx.device,
        len(prepared.train_rows),
        prepared.n_train_before_balancing,
        data.balancing,
        per_rank,
        len(prepared.val_rows),
    )

    if not ctx.is_main:
        fit(ddp_model, train_loader, val_loader, train, prepared.pos_weight, ctx.device)
        barrier(ctx)  # wait while rank 0 writes the artefacts and registers the version
        return None

    logger = run_logger()
    run = flow_run_id()
    name = version_name(train.architecture)
    out = model_dir(home_path, name)
    log_handler = logging.FileHandler(out / "train.log")
    run_id = open_training_run(url, train, ctx.describe(), prepared, run)
    history_rows: list[dict] = []
    on_epoch = epoch_recorder(url, run_id, name, train, logger, log_handler, history_rows, table_artifact=run is not None)
    try:
        result = fit(
            ddp_model,
            train_loader,
            val_loader,
            train,
            prepared.pos_weight,
            ctx.device,
            on_epoch=on_epoch,
            checkpoint_path=out / "checkpoint.pt",
        )
    except BaseException:
        fail_training_run(url, run_id)
        raise
    finally:
        log_handler.close()

    distributed = {
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "device_type": ctx.device.type,
        "batch_size_per_process": train.batch_size,
        "global_batch_size": train.batch_size * ctx.world_size,
    }
    version_id = register_trained_model(
        url, out, name, run_id, model, result, prepared, data, train, history_rows, extra_config={"distributed": distributed}
    )
    logger.info(
        "registered %s (id %d), best epoch %d, %s %.3f on %s",
        name,
        version_id,
        result.best_epoch,
        train.checkpoint_selection,
        result.best_metric,
        ctx.describe(),
    )
    barrier(ctx)
    return version_id


def _log_to_stderr(ctx: DistContext) -> None:
    """The ``cxr`` loggers (this module's, and the tasks' outside a Prefect run) to stderr at
    INFO, each line prefixed with the rank. Prefect's root handler is left alone."""
    logger = logging.getLogger("cxr")
    if not any(getattr(h, "_cxr_ddp", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler._cxr_ddp = True
        handler.setFormatter(
            logging.Formatter(f"[rank {ctx.rank}/{ctx.world_size}] %(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m flows.train_ddp",
        description="Data-parallel training of seed 004's network; rank 0 registers the model version.",
    )
    parser.add_argument(
        "--config",
        "-c",
        default=None,
        help="Pipeline YAML or shipped name (default: $CXR_CONFIG, else demo); its data and train.",
    )
    parser.add_argument("--home", default=None, help="State folder (default: $CXR_HOME or .cxr).")
    parser.add_argument("--database-url", default=None, help="SQLAlchemy URL (default: $CXR_DATABASE_URL or sqlite in home).")
    parser.add_argument("--epochs", type=int, default=None, help="Override train.epochs.")
    parser.add_argument(
        "--device", default=None, help="Override train.device: auto, cpu or cuda (each rank takes cuda:LOCAL_RANK)."
    )
    parser.add_argument("--backend", default=None, choices=["nccl", "gloo"], help="Default: nccl on CUDA, gloo on CPU.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int | None:
    """The torchrun entry point; returns the model version id on rank 0, None elsewhere."""
    args = parse_args(argv)
    try:
        config = load_pipeline_config(resolve_config(args.config))
    except MissingInputError as exc:
        raise SystemExit(str(exc)) from None
    updates = {k: v for k, v in (("epochs", args.epochs), ("device", args.device)) if v is not None}
    train = TrainConfig.model_validate({**config.train.model_dump(), **updates})
    ctx = init_from_env(args.backend, device=train.device)
    Settings().apply_torch_threads()  # the ranks on one host share its cores, unless CXR_TORCH_THREADS says
    _log_to_stderr(ctx)
    try:
        version_id = train_distributed(ctx, config.data, train, home=args.home, database_url=args.database_url)
    finally:
        cleanup()
    if version_id is not None:
        print(f"model_version_id={version_id}", flush=True)
    return version_id


if __name__ == "__main__":  # pragma: no cover - launched by torchrun
    main(sys.argv[1:])
