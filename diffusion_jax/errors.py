"""The errors a user can fix, told apart from bugs.

    raise errors.ConfigError("training.log_every must be >= 1, got 0.")

`UserError` is the base of every error whose message says what is wrong and what to do: a config
value, a path, an unreadable file, a full disk, a workdir in use. The command line prints such an
error as one line, `diffusion-jax <command>: error: <message>`, with exit status 2 (`--debug`
shows the traceback); any other exception is a bug and keeps its traceback. The package's own
error types (CheckpointError, DatasetNotFoundError, ...) derive from it. Imports nothing.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message names what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """A config key has a value of the wrong type or out of range; the message names the key."""


def os_error_in(error: BaseException | None, depth: int = 8) -> OSError | None:
    """The first OSError in `error`'s chain of causes (libraries wrap those of their threads)."""
    while error is not None and not isinstance(error, OSError) and (depth := depth - 1):
        error = error.__cause__ or error.__context__
    return error if isinstance(error, OSError) else None
