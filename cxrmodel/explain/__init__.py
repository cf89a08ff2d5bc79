"""Explanations: Grad-CAM heat maps, similar-case retrieval (and how much it means) and the 2-D embedding map.

Nothing is re-exported here: import names from their modules (``from cxrmodel.explain.<module>
import name``), so importing one stage does not import the others' dependencies."""
