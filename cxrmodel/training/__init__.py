"""Stage 3, training: the training loop (mixed precision, checkpoints, early stopping), data-parallel
helpers, the preparation of a run's training data, training a network, saving what a run
leaves, and the embedding baselines.

Nothing is re-exported here: import names from their modules (``from cxrmodel.training.<module>
import name``), so importing one stage does not import the others' dependencies."""
