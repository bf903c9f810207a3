"""Atomic, resumable training checkpoints that load with ``torch.load(weights_only=True)``.

Everything in a checkpoint is a tensor, a number, a string, a list, a dict or None (RNG states are
saved as the uint8 tensors torch returns), so loading one never unpickles code. A checkpoint is
written to a temporary file in the same directory, flushed to disk, then renamed over the old one:
a run killed at any instant leaves either the previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import os

import torch

from kdprune.atomic import atomic_open
from kdprune.errors import ConfigError

VERSION = 1
FILENAME = "checkpoint.pt"
METRICS = "metrics.json"  # written when a run has finished


def run_state(out_dir) -> str:
    """What ``out_dir`` holds: ``"finished"`` (a run's metrics.json), ``"partial"`` (a checkpoint of an
    unfinished run) or ``"empty"``."""
    if not out_dir:
        return "empty"
    out_dir = os.fspath(out_dir)
    if os.path.exists(os.path.join(out_dir, METRICS)):
        return "finished"
    return "partial" if os.path.exists(os.path.join(out_dir, FILENAME)) else "empty"


def where(epoch: int, step_in_epoch: int, epochs: int, step: int, elapsed: float) -> str:
    """A run's position in words: ``epoch 2/3 step 40 (optimizer step 140, 95 s trained)``."""
    at = f"epoch {epoch + 1}/{epochs} step {step_in_epoch}" if step_in_epoch else f"the start of epoch {epoch + 1}/{epochs}"
    return f"{at} (optimizer step {step}, {elapsed:.0f} s trained)"


def describe(path) -> str:
    """Where a checkpoint stands, in words: ``epoch 2/3, step 140 (95 s trained)``; '' when unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return where(state["epoch"], state["step_in_epoch"], state["config"]["epochs"], state["step"],
                     state["elapsed"])
    except Exception:  # noqa: BLE001 (a description only)
        return ""


def rng_state() -> dict:
    """This process's torch RNG states (CPU, and the current CUDA device when there is one)."""
    state = {"cpu": torch.get_rng_state(), "cuda": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(path: str, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_open(path, "wb") as f:
        torch.save({"version": VERSION, **state}, f)


def load(path: str) -> dict:
    """Read a checkpoint written by :func:`save` (tensors to the CPU, no code unpickled)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ConfigError(f"no checkpoint at {path}; drop --resume to start a fresh run") from err
    except Exception as err:  # a torn or foreign file
        raise ConfigError(f"{path} is not a readable kdprune checkpoint ({err}); delete it to start over") from err
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ConfigError(f"{path} is not a version-{VERSION} kdprune checkpoint; delete it to start over")
    return state


def check_config(saved: dict, current: dict, path: str) -> None:
    """Refuse to resume a run under a config that changes its outcome (device, loss kernel and logging
    may change: the kernels agree to rounding)."""
    free = {"device", "eval_every", "log_every", "checkpoint_every", "checkpoint_minutes", "loader",
            "eval_batch_size", "compile", "workers", "loss_kernel", "loss_backend"}
    diff = sorted(k for k in set(saved) | set(current) if k not in free and saved.get(k) != current.get(k))
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise ConfigError(f"{path} was written by a run with another config ({detail}); "
                          "resume with the same options or use a new --out directory")


def check_inputs(saved: dict, current: dict, path) -> None:
    """Refuse to resume a run on other inputs (another dataset, subset or teacher store) than the ones
    its checkpoint was trained on; an input that either side does not record is not compared."""
    names = {"dataset": "dataset", "subset": "subset (--subset)", "store": "teacher store (--store)"}
    diff = [k for k in saved if k in current and saved[k] != current[k] and not k.endswith("_name")]
    if diff:
        detail = "; ".join(f"{names.get(k, k)}: {saved.get(k + '_name') or saved[k]} -> "
                           f"{current.get(k + '_name') or current[k]}" for k in diff)
        raise ConfigError(f"{path} was written by a run on other inputs ({detail}); resume with the inputs it "
                          "was trained on, or start a new run in another --out")
