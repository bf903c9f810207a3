"""Pruning scores: one float32[N] per dataset, oriented so that higher = harder (more informative).

The methods are listed, with their kind and default epochs, in :data:`kdprune.registry.SCORE_METHODS`;
:func:`kdprune.compute_score` (in :mod:`kdprune.train.scoring`, since most methods train a model)
computes any of them, ``save_scores`` / ``load_scores`` write and read them with their provenance,
and :func:`kdprune.prune` turns them into an :class:`~kdprune.IndexSet`.

| method | what | cost |
| --- | --- | --- |
| ``el2n`` | ``||softmax - onehot||`` in the last of ``epochs`` epochs (Paul et al. 2021), from the loss's own per-sample ``el2n`` | the training run |
| ``grand`` | per-sample gradient norm over all weights after ``epochs`` epochs (0 = at init), ``torch.func`` | training + one vmap'd backward per sample |
| ``grand-last`` | the same over the head only: closed form ``||p - y|| * ||[h, 1]||`` | training + one forward |
| ``forgetting`` | forgetting events over ``epochs`` epochs (Toneva et al. 2019) | the training run |
| ``aum`` | minus the area under the margin (Pleiss et al. 2020) | the training run |
| ``prototypes`` | distance to the nearest k-means centroid of ``model.embed`` (Sorscher et al. 2022; supervised stand-in embedding, see :mod:`.prototypes`) | training + one forward + k-means |
| ``teacher-el2n`` / ``teacher-entropy`` / ``teacher-margin`` | from the stored teacher logits | one pass over the store |
| ``random`` | uniform [0, 1), seeded | free |

Training-dynamics scores are recorders (:mod:`.dynamics`) that the trainer calls at every step
(``on_batch(epoch, ids, logits, labels, out)``); this package imports no trainer, loader or loss.
Each seed trains a fresh model (seeded init and order) and the seeds' scores are averaged. The models
are trained with their own short schedule (``fit``'s one-cycle over ``epochs``), not stopped early in
a long run as in Paul et al.; ``epochs`` is what makes a score "early".
"""
from __future__ import annotations

from kdprune.registry import SCORE_METHODS
from kdprune.scores.io import ScoreFile, check_scores, load_scores, save_scores

__all__ = ["METHODS", "save_scores", "load_scores", "ScoreFile", "check_scores"]

METHODS = SCORE_METHODS.names()
