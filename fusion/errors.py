"""Errors a user can act on; the CLI prints them as one line and exits non-zero."""


class FusemixError(Exception):
    """Base class of user-facing errors."""


class AudioError(FusemixError, ValueError):
    """An audio file cannot be used; the message names the file and the reason."""


class ModelUnavailableError(FusemixError, OSError):
    """A model id cannot be loaded (offline, unknown id, or missing checkpoint); the message names it."""
