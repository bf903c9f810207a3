"""kdprune: train on a pruned subset with knowledge distillation from a full-data teacher.

``import kdprune`` stays light: every public name is resolved on first use through the module-level
``__getattr__`` below, so neither triton, ffcv nor dali (nor the C++ extension) is imported until
something needs it.
"""
from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "kd_loss": "kdprune.loss",
    "KDLoss": "kdprune.loss",
    "KDOutput": "kdprune.loss",
    "alpha_for_fraction": "kdprune.loss",
    "TeacherStore": "kdprune.store",
    "IndexSet": "kdprune.selection",
    "prune": "kdprune.selection",
    "load_dataset": "kdprune.data",
    "compute_score": "kdprune.train.scoring",
    "save_scores": "kdprune.scores",
    "load_scores": "kdprune.scores",
    "RS2Sampler": "kdprune.loaders.rs2",
    "convert": "kdprune.loaders.converted",
    "with_ids": "kdprune.dropin",
    "KeptIdSampler": "kdprune.dropin",
    "fingerprint": "kdprune.dropin",
    "write_teacher_logits": "kdprune.logits",
    "fit": "kdprune.train.loop",
    "evaluate": "kdprune.train.loop",
    "build_model": "kdprune.models",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kdprune' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
