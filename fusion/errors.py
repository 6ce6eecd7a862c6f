"""Errors a user can act on; the CLI and the UI show them as one line, and nothing else.

Everything that is not a ``FusemixError`` is a bug (a shape mismatch in torch, a broken invariant) and keeps
its traceback. Each subclass also inherits the built-in error it refines (``ValueError`` or
``FileNotFoundError``), so callers that catch those keep working.

- ``InputError``: a bad argument, option or input file (``MissingFileError``, ``AudioError``, ``ManifestError``).
- ``MissingModelError``: a model that is not on disk and cannot be fetched (an unknown or unreachable hub id).
- ``CheckpointError``: a checkpoint, preset, caption bank or latent cache that is damaged or does not match.
"""


class FusemixError(Exception):
    """Base class of user-facing errors: the message is one line naming the file, flag or value at fault."""


class InputError(FusemixError, ValueError):
    """A bad argument, command-line option or input file."""


class MissingFileError(InputError, FileNotFoundError):
    """An input file or folder the user named does not exist."""


class AudioError(InputError):
    """An audio file cannot be used; the message names the file and the reason."""


class MissingModelError(FusemixError, FileNotFoundError):
    """A model id cannot be loaded (offline, unknown id, or not on disk); the message names it."""


class CheckpointError(FusemixError, ValueError):
    """A saved part (weights, config, preset, caption bank, latent cache) is damaged or does not fit the others."""


# The earlier name of MissingModelError (an OSError then, as FileNotFoundError is now).
ModelUnavailableError = MissingModelError
