"""A user's mistake in a Hydra entry point prints one line, not a traceback.

A bad value, a missing folder or class folders that do not match the config are the
user's to fix, and the message of each names what is wrong; a traceback around it hides
that line. ``HYDRA_FULL_ERROR=1`` still shows the traceback, as Hydra documents.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from hydra.errors import InstantiationException
from omegaconf.errors import OmegaConfBaseException

from scripts._cli import fail

#: What a user's input raises: bad values and files (BadFileError and the config checks
#: are ValueErrors), missing or unreadable paths, and Hydra / OmegaConf config errors.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    OmegaConfBaseException,
    InstantiationException,
)


def one_line(err: BaseException) -> str:
    """The error's message on one line; for a failed ``_target_`` call, its cause's."""
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, USER_ERRORS):
        err = err.__cause__
    return " ".join(str(err).split()) or type(err).__name__


def one_line_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a ``@hydra.main`` task function: a user error exits with code 2 after one
    line on stderr, unless ``HYDRA_FULL_ERROR=1``."""

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(
                fail(f"{one_line(err)} (HYDRA_FULL_ERROR=1 shows the traceback)")
            ) from None

    return run
