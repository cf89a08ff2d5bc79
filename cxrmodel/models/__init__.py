"""Stage 2, models: the seed-004 network and the CheXNet-style baseline, backbone weights, safetensors
artefacts with their sha256, the embedding baselines (k-NN, MLP), the classical pixel-logistic baseline, and loading a model version from its files.

Nothing is re-exported here: import names from their modules (``from cxrmodel.models.<module>
import name``), so importing one stage does not import the others' dependencies."""
