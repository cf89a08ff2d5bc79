"""cxrmodel: the pure machine-learning library behind the chest X-ray pipeline.

Nothing in this package imports Prefect or the database layer; every function works on
arrays, DataFrames, tensors and files, so it can be used and tested on its own.

Research tool only: not a medical device, not for clinical decisions.
"""

from cxrmodel.findings import FINDINGS, NO_FINDING, NUM_FINDINGS

__all__ = ["FINDINGS", "NO_FINDING", "NUM_FINDINGS"]
__version__ = "0.1.0"


# --- TEMPORARY (removed before landing): old flat module names resolve to their new homes
# while research scripts outside the repository still import them.
import importlib as _importlib
import importlib.abc as _abc
import importlib.util as _util
import sys as _sys

_LEGACY = {
    "metadata": "data.metadata",
    "sidecar": "data.sidecar",
    "splits": "data.splits",
    "balancing": "data.balancing",
    "imaging": "data.imaging",
    "cache": "data.cache",
    "transforms": "data.transforms",
    "hub": "data.hub",
    "synth": "data.synth",
    "model": "models.networks",
    "weights": "models.weights",
    "artifacts": "models.artifacts",
    "baselines": "models.embedding",
    "train": "training.loop",
    "distributed": "training.distributed",
    "metrics": "evaluation.metrics",
    "thresholds": "evaluation.thresholds",
    "calibration": "evaluation.calibration",
    "bootstrap": "evaluation.bootstrap",
    "subgroups": "evaluation.subgroups",
    "gradcam": "explain.gradcam",
    "similarity": "explain.similarity",
    "embedding_map": "explain.embedding_map",
}


class _LegacyAliases(_abc.MetaPathFinder, _abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if parts[0] == "cxrmodel" and len(parts) >= 2 and parts[1] in _LEGACY:
            return _util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        parts = spec.name.split(".")
        return _importlib.import_module(".".join(["cxrmodel", _LEGACY[parts[1]], *parts[2:]]))

    def exec_module(self, module):
        pass


_sys.meta_path.append(_LegacyAliases())
