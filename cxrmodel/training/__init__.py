"""Stage 3, training: the training loop (mixed precision, checkpoints, early stopping), data-parallel
helpers, the preparation of a run's training data, training a network, saving what a run
leaves, and the embedding baselines.

Public names are re-exported here and imported on first use (``lazy_loader``), so importing
one stage does not import the others' dependencies."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules={
        "baselines",
        "data",
        "distributed",
        "loop",
        "network",
        "recipe",
        "saving",
    },
    submod_attrs={
        "baselines": ["FittedBaseline", "embed_training_split", "fit_knn_baseline", "fit_mlp_baseline"],
        "data": ["TrainingData", "prepare_training_data", "training_loaders", "version_name"],
        "distributed": [
            "DistContext",
            "init_from_env",
            "is_distributed",
            "wrap_ddp",
            "unwrap",
            "distributed_loader",
            "broadcast_object",
            "all_reduce_sum",
            "broadcast_buffers",
            "all_gather_predictions",
            "barrier",
            "cleanup",
        ],
        "recipe": ["LearningRateSchedule", "make_optimizer", "make_ema", "selection_rule", "SELECTION_RULES"],
        "loop": [
            "EpochResult",
            "FitResult",
            "seed_everything",
            "positive_weights",
            "Acceleration",
            "predict_loader",
            "fit",
        ],
        "network": ["train_network"],
        "saving": ["SavedModel", "model_config", "save_trained_model"],
    },
)
