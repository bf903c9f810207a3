"""A training run described by one typed, validated dataclass (the CLI builds it; nothing in it runs code)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from kdprune.errors import ConfigError


@dataclass
class TrainConfig:
    """Everything that decides a run's outcome. ``alpha`` weights the distillation term
    (``"auto"`` resolves it from the keep fraction); ``temperature`` is T."""

    model: str = "cnn"
    width: int = 16
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    alpha: float | str = 0.0
    temperature: float = 4.0
    augment: bool = True
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> "TrainConfig":
        if self.alpha != "auto":
            try:
                self.alpha = float(self.alpha)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"alpha must be a number in [0, 1] or 'auto', got {self.alpha!r}") from err
            if not 0.0 <= self.alpha <= 1.0:
                raise ConfigError(f"alpha must lie in [0, 1] (0 = cross-entropy only, 1 = distillation only), got {self.alpha}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        for name in ("epochs", "batch_size", "width"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d).validate()
