"""Atomic file writes: a crash or a full disk while writing never damages the last good file.

Torch-free on purpose: a site's key-exchange messages write their state with it, and their
processes must not pay torch's import (:mod:`task.runtime.checkpoint` adds ``torch.save`` on top).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary file in the same folder, fsync, then rename over
    ``path``. ``os.replace`` is atomic on POSIX, so readers see either the old or the new
    file, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise _untouched(err, path) from err
    except RuntimeError as err:
        # torch's zip writer hides a failed write (a full disk, a file-size limit) behind
        # "unexpected pos" from its own clean-up; the OSError is the exception's context
        if isinstance(err.__context__, OSError):
            raise _untouched(err.__context__, path) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _untouched(err: OSError, path: Path) -> OSError:
    """``err`` again, naming the file and saying that the previous version survives."""
    where = f"while writing {path} (the previous {path.name} is intact)"
    if err.errno is None:
        return OSError(f"{err} {where}")
    return type(err)(err.errno, f"{err.strerror} {where}")


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8), atomically."""
    return write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))
