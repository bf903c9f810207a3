"""Prototype scores (Sorscher et al. 2022): k-means over embeddings; a sample's score is its distance
to the nearest centroid (far from every prototype = hard, higher = harder).

What we embed with: Sorscher et al. use a self-supervised model (SwAV). We do not train one here;
:func:`kdprune.compute_score` embeds with ``model.embed(x)`` of a model trained with the
supervised loss for a few epochs (``epochs=0`` uses the random-init network, which is a random
convolutional feature map). Both are supervised/untrained stand-ins for the paper's self-supervised
embedding, and the scores inherit that difference; pass your own embeddings to
:func:`prototype_scores` to use a self-supervised model.
"""
from __future__ import annotations

import numpy as np
import torch

from kdprune.errors import ConfigError


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [N, K], clamped at 0 (the expansion can go slightly negative)."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)[None]).clamp_min_(0)


def kmeans(x: torch.Tensor, k: int, *, iters: int = 50, seed: int = 0, tol: float = 1e-6):
    """Lloyd's k-means with k-means++ seeding, deterministic given ``seed``.

    Returns ``(centroids [k, D], assignment [N] int64)``. An empty cluster is re-seeded with the point
    farthest from its centroid, so all ``k`` centroids stay in use.
    """
    x = torch.as_tensor(x).float()
    n = len(x)
    if not (1 <= k <= n):
        raise ConfigError(f"k-means needs 1 <= k <= N, got k={k} for N={n}")
    g = torch.Generator().manual_seed(int(seed))
    centroids = x[torch.randint(n, (1,), generator=g)]
    d2 = _sq_dist(x, centroids).squeeze(1)
    for _ in range(1, k):  # k-means++: next centroid drawn with probability proportional to d^2
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        nxt = x[torch.multinomial(probs, 1, generator=g)]
        centroids = torch.cat([centroids, nxt])
        d2 = torch.minimum(d2, _sq_dist(x, nxt).squeeze(1))
    prev = None
    for _ in range(iters):
        dist = _sq_dist(x, centroids)
        assign = dist.argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        new = sums / counts.clamp_min(1)[:, None].float()
        for c in torch.nonzero(counts == 0).flatten().tolist():
            far = dist.gather(1, assign[:, None]).squeeze(1).argmax()
            new[c] = x[far]
        shift = (new - centroids).pow(2).sum()
        centroids = new
        if prev is not None and torch.equal(assign, prev) or shift <= tol:
            break
        prev = assign
    return centroids, _sq_dist(x, centroids).argmin(1)


def prototype_scores(embeddings, k: int, *, seed: int = 0, normalize: bool = True, iters: int = 50) -> np.ndarray:
    """Distance of each embedding to its nearest k-means centroid, float32[N] (higher = harder).
    ``normalize`` L2-normalises embeddings first (cosine geometry, as with self-supervised features)."""
    x = torch.as_tensor(embeddings).float()
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    centroids, _ = kmeans(x, k, seed=seed, iters=iters)
    return _sq_dist(x, centroids).min(1).values.sqrt().numpy().astype(np.float32)


@torch.no_grad()
def embed_all(model, images: np.ndarray, *, batch_size: int | None = None, device="cpu") -> torch.Tensor:
    """``model.embed`` of every image (uint8 [N, H, W, C]) in eval mode, float32 [N, D] on the CPU."""
    from kdprune.data import to_float
    from kdprune.scores.grand import forward_batch
    batch_size = batch_size or forward_batch(device)
    if not hasattr(model, "embed"):
        raise ConfigError("prototype scores need a model with .embed(x) (kdprune's models have one)")
    model = model.to(device).eval()
    parts = [model.embed(to_float(images[s:s + batch_size]).to(device)).float().cpu()
             for s in range(0, len(images), batch_size)]
    return torch.cat(parts)


def prototype_scores_of_model(model, images: np.ndarray, labels: np.ndarray, *, device="cpu", k: int | None = None,
                              seed: int = 0) -> np.ndarray:
    """Prototype scores of ``model.embed`` over ``images``, with ``k`` clusters (default: the number of
    classes in ``labels``); the form :func:`kdprune.compute_score` calls."""
    k = k or len(np.unique(np.asarray(labels)))
    return prototype_scores(embed_all(model, images, device=device), k, seed=seed)
