"""One registry for each family of named things: score methods, prune modes, loss kernels and loader
backends. The CLI's choices, the error messages that list valid names, and the docs read these lists;
no other module keeps a copy of the names.

An entry names its implementation as ``"module:attribute"`` and imports it only when asked
(:meth:`Registry.load`), so reading the names (``kdprune --help``) imports no torch. Your own entries
go in the same way, or with the object itself:

>>> from kdprune.registry import SCORE_METHODS
>>> "el2n" in SCORE_METHODS and SCORE_METHODS["el2n"].info["kind"]
'dynamics'
>>> SCORE_METHODS.names()[:3]
('el2n', 'forgetting', 'aum')
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

from kdprune.errors import ConfigError


class Entry(NamedTuple):
    name: str
    target: Any  # "module:attribute", an object, or None for a name with no object behind it
    help: str
    info: dict


_DECORATE = object()


class Registry:
    """Names of one ``kind`` of thing, in the order they were registered."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Any = _DECORATE, *, help: str = "", **info):
        """Add ``name``. With ``target`` (an object, ``"module:attribute"``, or None for a bare name) it
        is registered at once; without, this returns a decorator that registers what it decorates. A
        name registered twice is an error."""
        def add(obj):
            if name in self._entries:
                raise ConfigError(f"{self.kind} {name!r} is registered already")
            self._entries[name] = Entry(name, obj, help, dict(info))
            return obj
        return add if target is _DECORATE else add(target)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> Entry:
        """The entry of ``name``; an unknown name is a ConfigError listing the valid ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}") from None

    def check(self, name: str) -> str:
        """``name`` when it is registered, else the ConfigError of :meth:`__getitem__`."""
        return self[name].name

    def load(self, name: str) -> Any:
        """The object registered as ``name``, imported on first use."""
        target = self[name].target
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
        return target

    def where(self, **info) -> tuple[str, ...]:
        """Names whose ``info`` holds every given key with the given value."""
        return tuple(e.name for e in self if all(e.info.get(k) == v for k, v in info.items()))

    def describe(self) -> str:
        """``name: help`` lines, for ``--help`` texts and docs."""
        return "\n".join(f"{e.name}: {e.help}" for e in self)


def _names(registry: Registry, entries: list[tuple]) -> None:
    for name, target, help_text, info in entries:
        registry.register(name, target, help=help_text, **info)


SCORE_METHODS = Registry("score method")
"""Per-sample pruning scores, higher = harder. ``info``: ``kind`` (``dynamics``: a recorder fed while
training; ``model``: computed from a trained model; ``teacher``: from the stored teacher logits;
``random``) and ``epochs`` (default training epochs before or during scoring)."""
_names(SCORE_METHODS, [
    ("el2n", "kdprune.scores.dynamics:EL2NRecorder",
     "||softmax - onehot|| in the last training epoch (Paul et al. 2021)", {"kind": "dynamics", "epochs": 2}),
    ("forgetting", "kdprune.scores.dynamics:ForgettingRecorder",
     "forgetting events while training (Toneva et al. 2019)", {"kind": "dynamics", "epochs": 5}),
    ("aum", "kdprune.scores.dynamics:AUMRecorder",
     "minus the area under the margin (Pleiss et al. 2020)", {"kind": "dynamics", "epochs": 5}),
    ("grand", "kdprune.scores.grand:grand_scores",
     "per-sample gradient norm over all weights (0 epochs = at init)", {"kind": "model", "epochs": 0}),
    ("grand-last", "kdprune.scores.grand:grand_last_layer",
     "gradient norm of the head only, closed form", {"kind": "model", "epochs": 0}),
    ("prototypes", "kdprune.scores.prototypes:prototype_scores_of_model",
     "distance to the nearest k-means centroid of the embedding", {"kind": "model", "epochs": 1,
                                                                   "options": ("k", "seed")}),
    ("teacher-el2n", "kdprune.scores.teacher:teacher_scores",
     "EL2N of the stored teacher softmax", {"kind": "teacher"}),
    ("teacher-entropy", "kdprune.scores.teacher:teacher_scores",
     "entropy of the stored teacher softmax", {"kind": "teacher"}),
    ("teacher-margin", "kdprune.scores.teacher:teacher_scores",
     "minus the teacher's probability margin", {"kind": "teacher"}),
    ("random", None, "uniform [0, 1), seeded", {"kind": "random"}),
])

PRUNE_MODES = Registry("prune mode")
"""How :func:`kdprune.prune` turns scores into kept ids."""
_names(PRUNE_MODES, [
    ("hardest", None, "the highest scores (the default with scores)", {"needs_scores": True}),
    ("easiest", None, "the lowest scores", {"needs_scores": True}),
    ("ccs", "kdprune.scores.ccs:ccs_select", "coverage-centric stratified sampling with a hard cut-off",
     {"needs_scores": True}),
    ("random", None, "a seeded random subset (the default without scores)", {"needs_scores": False}),
])

LOSS_KERNELS = Registry("loss kernel")
"""The implementations of :func:`kdprune.kd_loss`."""
_names(LOSS_KERNELS, [
    ("auto", None, "triton on CUDA, cpu when the C++ extension is built, else torch", {}),
    ("triton", None, "the fused Triton kernel (CUDA tensors)", {}),
    ("cpu", None, "the fused C++ kernel (CPU tensors; needs kdprune._C)", {}),
    ("torch", "kdprune.loss.reference:kd_loss_ref", "the pure-torch reference (any device, float64 too)", {}),
])

LOADER_BACKENDS = Registry("loader backend")
"""The data loaders of :func:`kdprune.loaders.build`. ``info["extra"]``: the pip extra it needs."""
_names(LOADER_BACKENDS, [
    ("torch", None, "torch DataLoader over any map-style dataset (always available)", {"extra": None}),
    ("ffcv", None, "FFCV over a .beton (pip install 'kdprune[ffcv]')", {"extra": "ffcv"}),
    ("dali", None, "NVIDIA DALI over a converted dataset (pip install 'kdprune[dali]')", {"extra": "dali"}),
])

REGISTRIES: dict[str, Registry] = {r.kind: r for r in (SCORE_METHODS, PRUNE_MODES, LOSS_KERNELS, LOADER_BACKENDS)}


def register_score(name: str, *, kind: str, epochs: int = 1, options: tuple = (), help: str = "") -> Callable:
    """Decorator: register a score method that :func:`kdprune.compute_score` and ``kdprune score``
    then offer. ``kind="model"``: ``fn(model, images, labels, *, device)`` -> float32[N] (higher =
    harder), computed after ``epochs`` of training (``info["options"]`` names extra keywords it takes
    from ``compute_score``: ``k``, ``seed``); ``kind="dynamics"``: a recorder class (a
    :class:`kdprune.scores.dynamics.Recorder`) whose ``for_run(num_samples, epochs)`` makes the
    recorder fed during ``epochs`` of training and whose ``finalize()`` returns the scores."""
    if kind not in ("model", "dynamics"):
        raise ConfigError(f"a score method's kind is 'model' or 'dynamics', got {kind!r}")
    return SCORE_METHODS.register(name, help=help, kind=kind, epochs=epochs, options=tuple(options))
