"""Synthetic chest-radiograph phantoms written in the real NIH ChestX-ray14 layout."""

from cxrmodel.data.synth.dataset import SynthSummary, generate_dataset
from cxrmodel.data.synth.phantom import Anatomy, render_phantom, sample_anatomy

__all__ = ["Anatomy", "SynthSummary", "generate_dataset", "render_phantom", "sample_anatomy"]
