"""The kinds of model version: the one place that names them.

Two are networks that score images themselves (seed 004's DenseNet121 + FPN and the
CheXNet-style image-only DenseNet121); two are embedding baselines, heads fitted on a parent
network's image embeddings (k-NN and MLP: loaded with their parent, they score images too);
one is classical (per-finding logistic regression on downsampled pixels and patient features,
:mod:`cxrmodel.models.classical`). Every kind can be champion and be served by nightly
scoring. The training recipe, the loader, the registry and the database's CHECK constraints
all read these sets.
"""

from __future__ import annotations

from enum import StrEnum


class ModelKind(StrEnum):
    DENSENET121_FPN = "densenet121_fpn"
    DENSENET121 = "densenet121"
    KNN_EMBEDDING = "knn_embedding"
    MLP_EMBEDDING = "mlp_embedding"
    PIXEL_LOGISTIC = "pixel_logistic"


#: Networks: they take an image and patient features and return 14 logits.
NETWORK_KINDS: frozenset[ModelKind] = frozenset({ModelKind.DENSENET121_FPN, ModelKind.DENSENET121})
#: Embedding baselines: a head on the image embeddings of a parent network.
EMBEDDING_KINDS: frozenset[ModelKind] = frozenset({ModelKind.KNN_EMBEDDING, ModelKind.MLP_EMBEDDING})
#: Classical models: no network and no embedding space (no Grad-CAM, no similar cases).
CLASSICAL_KINDS: frozenset[ModelKind] = frozenset({ModelKind.PIXEL_LOGISTIC})


def is_network(kind: str) -> bool:
    return kind in NETWORK_KINDS


def is_embedding_head(kind: str) -> bool:
    return kind in EMBEDDING_KINDS


def has_embedding_space(kind: str) -> bool:
    """Whether the kind's scores come from a network's image embeddings (embedding map, similar cases)."""
    return kind in NETWORK_KINDS or kind in EMBEDDING_KINDS
