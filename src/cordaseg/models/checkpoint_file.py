"""Reading a checkpoint file safely, and the marks of the project's own format.

Checkpoints of the reference are old pickles. :func:`read_file` first finds out what a file is
without unpickling it (:mod:`cordaseg.models.checkpoint_scan`): a file that is empty, damaged or
not a checkpoint is reported as such; a pickle that references commands (``posix.system``,
``builtins.eval``, ...) is never unpickled; a *full pickle* (globals outside torch's
``weights_only`` allow-list, e.g. the reference's NumPy scalars) is only read when the caller
passes ``trust_pickle=True`` after the user has been told. The format itself (what a project
checkpoint holds) is described in :mod:`cordaseg.models.checkpoint`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from cordaseg.errors import CheckpointError
from cordaseg.models.checkpoint_scan import scan_checkpoint

FORMAT = "cordaseg"
"""The ``"format"`` entry of every project checkpoint."""
FORMAT_VERSION = 1
"""The ``"format_version"`` entry of the checkpoints this version writes and reads."""

TRUST_HINT = "pass --trust-pickle (trust_pickle=True)"
"""How a command that can read full pickles lets the user say that a file is trusted."""


def read_file(path: str | Path, trust_pickle: bool = False, trust_hint: str | None = None) -> Any:
    """Load any checkpoint file onto the CPU, safely unless ``trust_pickle``.

    What the file is gets decided before anything is unpickled (see the module docstring); every
    failure is a CheckpointError that says what the file is. ``trust_hint`` tells the user how to
    trust a full pickle with the command at hand, e.g. :data:`TRUST_HINT`; None (the default) where
    the caller only reads files that cordaseg wrote, which never need it.
    """
    path = Path(path)
    scan = scan_checkpoint(path)
    if not scan.is_checkpoint:
        raise CheckpointError(f"{path}: {scan.detail}")
    dangerous = scan.code_running_globals
    if dangerous:
        raise CheckpointError(
            f"{path}: refusing to unpickle it: its pickle references {', '.join(dangerous)}, which runs "
            "commands or code; no checkpoint needs that (the file is malicious or was tampered with)"
        )
    unsafe = scan.unsafe_globals
    if unsafe and not trust_pickle:
        names = ", ".join(unsafe[:4]) + (f" and {len(unsafe) - 4} more" if len(unsafe) > 4 else "")
        if trust_hint is None:
            raise CheckpointError(
                f"{path}: a full pickle (it references {names}, outside torch's weights_only allow-list); "
                "files written by cordaseg never are, so this is not one of them"
            )
        raise CheckpointError(
            f"{path}: a full pickle: it references {names}, outside torch's weights_only allow-list, and "
            f"unpickling runs their code. If you trust where the file came from, {trust_hint}"
        )
    # Files pickled with protocol 3+ use opcodes that torch's restricted unpickler lacks; when the
    # scan found only allow-listed globals there, the full unpickler runs no other code either.
    weights_only = not unsafe and scan.protocol <= 2
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (ModuleNotFoundError, AttributeError) as err:
        raise CheckpointError(f"{path}: its pickle needs code that is not installed ({err})") from err
    except Exception as err:  # the bytes looked right but do not load: say which file
        detail = str(err).strip().splitlines()
        raise CheckpointError(f"{path}: a damaged checkpoint ({detail[0] if detail else type(err).__name__})") from err


def is_project_checkpoint(obj: Any) -> bool:
    """Whether a loaded file is a checkpoint in the project's format (not a reference one)."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT
