"""Stage 1, data: NIH metadata and incoming sidecars, patient-level splits, balancing, image decoding and
the resized image cache, transforms, datasets, the Hugging Face source and the synthetic phantoms.

Nothing is re-exported here: import names from their modules (``from cxrmodel.data.<module>
import name``), so importing one stage does not import the others' dependencies."""
