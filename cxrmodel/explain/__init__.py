"""Explanations: Grad-CAM heat maps, similar-case retrieval (and how much it means) and the 2-D embedding map.

Public names are re-exported here and imported on first use (``lazy_loader``), so importing
one stage does not import the others' dependencies."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submodules={
        "embedding_map",
        "gradcam",
        "retrieval",
        "similarity",
    },
    submod_attrs={
        "embedding_map": ["embedding_map"],
        "gradcam": ["default_gradcam_layers", "grad_cam"],
        "retrieval": [
            "EmbeddingWhitening",
            "RetrievalQuality",
            "precision_at_k",
            "prevalence_precision_at_k",
            "random_precision_at_k",
            "retrieval_quality",
        ],
        "similarity": ["l2_normalise", "EmbeddingIndex", "build_retrieval_index"],
    },
)
