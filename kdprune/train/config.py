"""A training run described by one typed, validated dataclass (the CLI builds it; nothing in it runs code).

``batch_size`` is the GLOBAL batch of one optimizer step: each of ``W`` ranks loads
``batch_size / (W * grad_accum)`` samples per micro-step, so the same config means the same run on
one GPU or many, with or without accumulation (BatchNorm statistics aside).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields

from kdprune.errors import ConfigError
from kdprune.registry import LOADER_BACKENDS, LOSS_KERNELS

SCHEDULES = ("onecycle", "cosine", "step", "constant")
AMP = ("none", "bf16", "fp16")
NORMS = ("batch", "group", "none")
TEACHERS = ("store", "online")
LOADERS = LOADER_BACKENDS.names()
KERNELS = LOSS_KERNELS.names()
RENAMED = {"loss_backend": "loss_kernel"}  # old option -> new, accepted with a DeprecationWarning
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")


@dataclass
class TrainConfig:
    """Everything that decides a run's outcome. ``alpha`` weights the distillation term
    (``"auto"`` resolves it from the keep fraction; None, the default, means ``"auto"`` when the run
    has a teacher and 0 when it has none); ``temperature`` is T. ``augment`` None (the default)
    replays the teacher store's views when distilling from a store, and is on otherwise. The defaults reproduce the
    first trainer (SGD + Nesterov, one-cycle schedule, fp32, no accumulation, no EMA)."""

    model: str = "cnn"
    width: int = 16
    norm: str = "batch"  # built-in models only: batch | group | none
    epochs: int = 3
    batch_size: int = 128  # global, per optimizer step
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.15  # fraction of all optimizer steps spent warming up
    milestones: list = field(default_factory=lambda: [0.3, 0.6, 0.8])  # "step": fractions of the run
    gamma: float = 0.1  # "step": LR factor at each milestone
    max_grad_norm: float = 0.0  # 0 = no clipping
    alpha: float | str | None = None  # None: "auto" with a teacher, 0 without
    temperature: float = 4.0
    label_smoothing: float = 0.0
    loss_kernel: str = "auto"  # auto | triton | cpu | torch: the fused loss's implementation
    teacher: str = "store"  # store: logits from a TeacherStore; online: a teacher module on the same batch
    augment: bool | None = None  # None: as the teacher store's views (with a store), else on
    image_size: int = 0  # train crop size; 0 keeps the input size
    seed: int = 0
    device: str = "cpu"
    amp: str = "none"  # none | bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = False
    compile: bool | str = False  # False, True (inductor) or a torch.compile backend name
    grad_accum: int = 1
    ema: float = 0.0  # EMA decay per optimizer step; 0 = off
    sync_bn: bool = False
    rs2: float = 0.0  # RS2: a fresh random fraction of the data each epoch (0 = off; see kdprune.loaders.rs2)
    loader: str = "torch"  # torch | ffcv | dali
    workers: int = 2  # decoding processes/threads of folder, FFCV and DALI loaders
    eval_batch_size: int = 512
    eval_every: int = 0  # epochs between evaluations (0: only after the last)
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: at epoch ends only)
    log_every: int = 50  # optimizer steps between JSONL step records (0: epoch records only)
    checkpoint_minutes: float = 5.0  # minutes between checkpoints inside an epoch (0: by steps/epochs only)

    def validate(self) -> "TrainConfig":
        """Check every option; raise :class:`ConfigError` naming the option and its allowed values."""
        if isinstance(self.alpha, str) and self.alpha.lower() == "auto":
            self.alpha = "auto"
        if self.alpha is not None and self.alpha != "auto":
            try:
                self.alpha = float(self.alpha)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"alpha must be a number in [0, 1] or 'auto', got {self.alpha!r}") from err
            if not 0.0 <= self.alpha <= 1.0:
                raise ConfigError(f"alpha must lie in [0, 1] (0 = cross-entropy only, 1 = distillation only), got {self.alpha}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0 (T divides the logits), got {self.temperature}")
        for name in ("epochs", "batch_size", "width", "grad_accum", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "log_every", "image_size", "workers"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.rs2 <= 1.0:
            raise ConfigError(f"rs2 is the fraction of the dataset drawn each epoch, in (0, 1] (0 turns RS2 off), "
                              f"got {self.rs2}")
        if not self.checkpoint_minutes >= 0:
            raise ConfigError(f"checkpoint_minutes must be >= 0 (0 turns time-based checkpoints off), "
                              f"got {self.checkpoint_minutes}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.momentum < 0 or self.max_grad_norm < 0:
            raise ConfigError("weight_decay, momentum and max_grad_norm must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"warmup is a fraction of the run in [0, 1), got {self.warmup}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema is a decay in [0, 1) (e.g. 0.9999; 0 turns it off), got {self.ema}")
        if sorted(self.milestones) != list(self.milestones) or any(not 0 < m < 1 for m in self.milestones):
            raise ConfigError(f"milestones must be increasing fractions of the run in (0, 1), got {self.milestones}")
        self._choice("optimizer", ("sgd", "adamw"))
        self._choice("schedule", SCHEDULES)
        self._choice("amp", AMP)
        self._choice("norm", NORMS)
        self._choice("teacher", TEACHERS)
        self._choice("loader", LOADERS)
        self._choice("loss_kernel", KERNELS)
        if self.compile not in (False, True) and self.compile not in COMPILE_BACKENDS:
            raise ConfigError(f"compile must be true/false or a backend ({', '.join(COMPILE_BACKENDS)}), "
                              f"got {self.compile!r}")
        if ":" in self.model and self.norm != "batch":
            raise ConfigError(f"norm={self.norm!r} applies to kdprune's own models only, not {self.model}")
        return self

    def _choice(self, name: str, allowed) -> None:
        value = getattr(self, name)
        if isinstance(value, str) and value.lower() in allowed:  # names are case-insensitive
            setattr(self, name, value.lower())
        if getattr(self, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def per_rank_batch(self, world: int) -> int:
        """The micro-batch each of ``world`` ranks loads: ``batch_size / (world * grad_accum)``."""
        parts = world * self.grad_accum
        if self.batch_size % parts:
            raise ConfigError(f"batch_size {self.batch_size} (global) must be divisible by "
                              f"world size {world} x grad_accum {self.grad_accum} = {parts}")
        return self.batch_size // parts

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        for old, new in RENAMED.items():
            if old in d:
                warnings.warn(f"training option {old} is deprecated, use {new}", DeprecationWarning, stacklevel=2)
                d = {**{k: v for k, v in d.items() if k != old}, new: d[old]}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d).validate()

    @classmethod
    def load(cls, path: str, **overrides) -> "TrainConfig":
        """Read a JSON config file (a duplicate key is an error, not a silent overwrite); ``overrides``
        replace its values."""
        def no_duplicates(pairs):
            keys = [k for k, _ in pairs]
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise ConfigError(f"{path}: duplicate key(s) {dup}")
            return dict(pairs)

        try:
            with open(path) as f:
                d = json.load(f, object_pairs_hook=no_duplicates)
        except OSError as err:
            raise ConfigError(f"cannot read config {path} ({err}); pass an existing JSON file") from err
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON ({err})") from err
        d = {k: v for k, v in d.items() if not k.startswith("_")}  # "_comment" keys document the file
        return cls.from_dict({**d, **overrides})
