"""`kdprune reproduce`: the paper's findings on Fashion-MNIST, with tables and plots, in one call.

``reproduce(preset)`` runs (or resumes) the self-distillation teacher and the capacity-study teachers,
the pruning scores, the alpha sweep per method family and its fitted rule, the grid (every pruning
method and RS2 at every fraction, without and with KD, several seeds), the fixed-steps control, the
convergence check and the time-to-accuracy runs, and writes ``results.csv``, ``results.md`` and PNG
plots. ``estimate(preset, ...)`` says what a preset costs before running it. See docs/reproduce.md.
"""
from kdprune.reproduce.estimate import estimate
from kdprune.reproduce.grid import METHODS, PRESETS, Cell, ModelSpec, Preset, ScoreSpec
from kdprune.reproduce.runner import Reproduction, reproduce

__all__ = ["reproduce", "estimate", "Reproduction", "PRESETS", "Preset", "ModelSpec", "ScoreSpec", "Cell",
           "METHODS"]
