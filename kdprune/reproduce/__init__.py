"""`kdprune reproduce`: the paper's findings on Fashion-MNIST, with tables and plots, in one call.

``reproduce(preset)`` runs (or resumes) a teacher on all the data, the alpha study (random pruning,
every alpha at every keep fraction) and its fitted ``alpha_for_fraction`` rule, the grid (every
pruning method at every fraction, without and with KD, several seeds) and the teacher-capacity study,
and writes ``results.csv``, ``results.md`` and PNG plots. See docs/reproduce.md.
"""
from kdprune.reproduce.grid import METHODS, PRESETS, Cell, ModelSpec, Preset
from kdprune.reproduce.runner import Reproduction, reproduce

__all__ = ["reproduce", "Reproduction", "PRESETS", "Preset", "ModelSpec", "Cell", "METHODS"]
