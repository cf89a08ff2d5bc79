"""Stage 2, models: the seed-004 network and the CheXNet-style baseline, backbone weights, safetensors
artefacts with their sha256, the embedding baselines (k-NN, MLP), the classical pixel-logistic baseline, and loading a model version from its files.

Public names are re-exported here and imported on first use (``lazy_loader``), so importing
one stage does not import the others' dependencies."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules={
        "artifacts",
        "classical",
        "embedding",
        "kinds",
        "loading",
        "networks",
        "version_files",
        "weights",
    },
    submod_attrs={
        "artifacts": ["ArtifactIntegrityError", "sha256_file", "save_state_dict", "load_state_dict", "read_metadata"],
        "embedding": ["KnnEmbeddingModel", "MlpEmbeddingModel"],
        "kinds": [
            "ModelKind",
            "NETWORK_KINDS",
            "EMBEDDING_KINDS",
            "CLASSICAL_KINDS",
            "is_network",
            "is_embedding_head",
            "is_classical",
            "has_embedding_space",
        ],
        "classical": ["PixelLogisticModel", "pixel_features"],
        "loading": ["EMBEDDING_HEADS", "EmbeddingHead", "LoadedModel", "embed_image_files", "embed_loader", "load_model_version"],
        "version_files": ["ModelVersionFiles"],
        "networks": [
            "densenet121_backbone",
            "densenet_small_backbone",
            "pyramid_levels",
            "PyramidBackbone",
            "DenseNetFPNClassifier",
            "DenseNetClassifier",
            "densenet121_fpn",
            "densenet121_chexnet",
            "densenet_small_fpn",
            "densenet_small_chexnet",
            "build_model",
            "flip_averaged_probabilities",
            "network_probabilities",
            "count_parameters",
        ],
        "weights": ["normalise_densenet_keys", "load_state_dict_file", "imagenet_densenet121", "fetch_hub_weights"],
    },
)
