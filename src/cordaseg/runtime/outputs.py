"""Checks on where a command will write, made before any work starts.

A command that fails to write its results after an hour of evaluation, or that silently writes
over a file the user wanted to keep, wastes the hour or the file. Every command checks its output
paths first with these functions: each failure is a :class:`~cordaseg.errors.CordasegError`
whose one-line message names the option or key, the path and the cause. Nothing is created here.

Writability is asked of the operating system with ``os.access``, which also reports a read-only
file system; note that for root every folder on a writable file system is writable.
"""

from __future__ import annotations

import os
from pathlib import Path

from cordaseg.errors import CordasegError


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (as anything, a file included)."""
    current = path
    while not current.exists() and not current.is_symlink():
        if current.parent == current:
            break
        current = current.parent
    return current


def check_folder(path: str | Path, what: str) -> Path:
    """``path`` is a folder that exists and is writable, or one that can be created."""
    path = Path(path)
    existing = _nearest_existing(path.absolute())
    if existing == path.absolute():
        if not path.is_dir():
            raise CordasegError(f"{what} {path}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise CordasegError(f"{what} {path}: the folder is not writable (permission denied or read-only)")
        return path
    if not existing.is_dir():
        raise CordasegError(f"{what} {path}: cannot be created, {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CordasegError(f"{what} {path}: cannot be created, {existing} is not writable "
                            "(permission denied or read-only)")
    return path


def check_file(path: str | Path, what: str, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """``path`` can be written as a file: not a folder, its folder writable or creatable, and
    not an existing file unless ``overwrite`` (the message names ``flag``)."""
    path = Path(path)
    if path.is_dir():
        raise CordasegError(f"{what} {path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise CordasegError(f"{what} {path}: already exists; pass {flag} to replace it")
    check_folder(path.parent if str(path.parent) else Path("."), f"{what} {path}: its folder")
    return path


def check_empty_or_new_folder(path: str | Path, what: str, overwrite: bool = False,
                              flag: str = "--overwrite") -> Path:
    """Like :func:`check_folder`, and an existing folder must be empty unless ``overwrite``."""
    path = check_folder(path, what)
    if path.is_dir() and not overwrite and any(path.iterdir()):
        raise CordasegError(f"{what} {path}: the folder is not empty (files there would be replaced); "
                            f"pass {flag} to write into it, or choose a new folder")
    return path
