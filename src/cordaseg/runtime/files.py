"""Files written atomically: a crash leaves the old file or the new one, never a part of one."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class _WriteErrors:
    """A binary file that remembers the OSError of a failed write: torch's zip writer turns it
    into an unhelpful RuntimeError ("unexpected pos ..."), the OSError says what happened."""

    def __init__(self, file) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a partial file. A
    failed write (a full disk, a lost mount) removes the temporary file and raises an OSError
    that names ``path``, such as "No space left on device".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _WriteErrors(f)
            try:
                torch.save(obj, writer)
            except RuntimeError as err:
                if writer.error is None:
                    raise
                raise _naming(writer.error, path) from err
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise _naming(err, path) from err
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` with ``path`` as its file name (the temporary name means nothing to the user)."""
    code = err.errno or errno.EIO
    return OSError(code, err.strerror or os.strerror(code), str(path))
