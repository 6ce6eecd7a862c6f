"""Simulated interruptions of a training run: a checkpoint save that raises once the run reaches a given point."""

from __future__ import annotations

from fusion.training import CheckpointManager


def interrupt_after(monkeypatch, key: str, value: int) -> None:
    """Make the checkpoint save whose state has ``state[key] == value`` raise KeyboardInterrupt once it is written."""
    original = CheckpointManager.save

    def save_then_stop(self, state, **parts):
        folder = original(self, state, **parts)
        if state[key] == value:
            monkeypatch.setattr(CheckpointManager, "save", original)
            raise KeyboardInterrupt
        return folder

    monkeypatch.setattr(CheckpointManager, "save", save_then_stop)
