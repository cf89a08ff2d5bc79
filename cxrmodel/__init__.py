"""cxrmodel: the pure machine-learning library behind the chest X-ray pipeline.

Nothing in this package imports Prefect or the database layer; every function works on
arrays, DataFrames, tensors and files, so it can be used and tested on its own.

Research tool only: not a medical device, not for clinical decisions.
"""

from cxrmodel.findings import FINDINGS, NO_FINDING, NUM_FINDINGS

__all__ = ["FINDINGS", "NO_FINDING", "NUM_FINDINGS"]
__version__ = "0.1.0"
