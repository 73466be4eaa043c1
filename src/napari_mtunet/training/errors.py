"""The training package's error type (its own module so every part of the loop can raise it)."""


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""
