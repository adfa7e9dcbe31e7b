"""What a checkpoint file is, found before anything in it is unpickled.

``torch.load`` reports every unreadable file the same way: an empty file is an ``EOFError``, a
truncated archive a miniz error, and a JSON file or a pickle that would run a shell command both
"weights only load failed". :func:`scan_checkpoint` reads the file's bytes (never unpickling
them) and tells these apart:

- not a checkpoint at all: empty, a folder, text (e.g. JSON), unknown bytes, a plain Python
  pickle, a zip archive without ``data.pkl``;
- damaged: a zip archive cut off before its central directory, a member that fails its CRC, a
  pickle stream that ends early or holds unknown opcodes;
- a PyTorch checkpoint (zip or the legacy format) with the globals its pickle references: those
  outside torch's ``weights_only`` allow-list make it a *full pickle*, and those that can only
  serve to run commands or code (``posix.system``, ``builtins.eval``, ...) make it a file no
  checkpoint reader should ever unpickle.

Globals are collected from ``GLOBAL``/``INST`` (protocols 0-3) and ``STACK_GLOBAL`` (protocol 4+,
module and name from the two strings pushed before it); a ``STACK_GLOBAL`` whose operands are not
plain strings, or a copyreg extension code, is reported as an unresolved global.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Where no checkpoint has any business: a global from here runs commands or code when unpickled.
_CODE_RUNNING_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
    "code", "codeop", "ctypes", "multiprocessing", "webbrowser", "pickle", "_pickle", "marshal",
    "asyncio", "signal", "commands", "popen2", "platform", "pdb", "timeit", "urllib", "http",
})
_CODE_RUNNING_NAMES = frozenset({
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.__import__", "builtins.getattr",
    "builtins.setattr", "builtins.delattr", "builtins.open", "builtins.input", "builtins.breakpoint",
    "builtins.globals", "builtins.locals", "builtins.vars", "builtins.exit", "builtins.quit",
    "operator.attrgetter", "operator.methodcaller", "functools.partial", "types.FunctionType",
    "types.CodeType",
})
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                         "BINSTRING", "STRING"})
_MEMO_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NOT_PUSHING_OPS = frozenset({"MEMOIZE", "FRAME", "PROTO", "PUT", "BINPUT", "LONG_BINPUT"})
_UNRESOLVED = "<unresolved global>"


@dataclass
class CheckpointScan:
    """What :func:`scan_checkpoint` found out about one file."""

    kind: str
    """'torch-zip' or 'torch-legacy' for PyTorch checkpoints; otherwise why the file is not one:
    'missing', 'folder', 'empty', 'text', 'unknown', 'pickle', 'foreign-zip', 'damaged'."""
    detail: str = ""
    """For every kind but the two checkpoint kinds: the reason, as a phrase."""
    globals: set[str] = field(default_factory=set)
    """Every global the pickle references (``module.name``)."""
    protocol: int = 2
    """The pickle protocol of the main pickle."""

    @property
    def is_checkpoint(self) -> bool:
        return self.kind in ("torch-zip", "torch-legacy")

    @property
    def unsafe_globals(self) -> list[str]:
        """Globals outside torch's ``weights_only`` allow-list (unpickling them runs their code)."""
        allowed = _allowed_globals()
        return sorted(name for name in self.globals if name not in allowed)

    @property
    def code_running_globals(self) -> list[str]:
        """Globals that only serve to run commands or code; no checkpoint references them."""
        return sorted(name for name in self.globals
                      if name == _UNRESOLVED or name in _CODE_RUNNING_NAMES
                      or name.split(".")[0] in _CODE_RUNNING_MODULES)


def _allowed_globals() -> set[str]:
    from torch import _weights_only_unpickler as unpickler

    allowed = set(unpickler._get_allowed_globals())
    user = getattr(unpickler, "_get_user_allowed_globals", None)
    if user is not None:
        allowed |= set(user())
    return allowed


def _global_name(module: str, name: str) -> str:
    # Protocol 2 pickles written by Python 3 use Python 2 names (__builtin__.set): map them back,
    # as torch's own unpickler does.
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def pickle_globals(stream: io.BufferedIOBase) -> tuple[set[str], int]:
    """(globals referenced, protocol) of the pickle at the stream's position, read up to its STOP
    opcode. Raises ValueError for a stream that is not a complete pickle."""
    found: set[str] = set()
    protocol = 0
    memo: dict[int, object] = {}
    pushed: list[object] = []  # recent values pushed on the stack; None for anything but a string
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name == "PROTO":
            protocol = int(arg)
        elif name in ("GLOBAL", "INST"):
            module, attribute = str(arg).split(" ", 1)
            found.add(_global_name(module, attribute))
        elif name == "STACK_GLOBAL":
            operands = pushed[-2:]
            if len(operands) == 2 and all(isinstance(v, str) for v in operands):
                found.add(_global_name(*operands))
            else:
                found.add(_UNRESOLVED)
        elif name.startswith("EXT"):
            found.add(_UNRESOLVED)  # copyreg's extension registry: a global by number
        if name in _MEMO_PUT_OPS:
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in _MEMO_GET_OPS:
            pushed.append(memo.get(int(arg)))
        elif name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else None)
        elif name not in _NOT_PUSHING_OPS:
            pushed.append(None)
        del pushed[:-2]
    return found, protocol


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _describe_start(head: bytes) -> tuple[str, str]:
    """(kind, detail) of a file that is neither a zip archive nor a pickle."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        what = "JSON" if text.lstrip().startswith(("{", "[")) else "text"
        return "text", f"a {what} file, not a checkpoint"
    shown = " ".join(f"{b:02x}" for b in head[:8])
    return "unknown", f"not a checkpoint: neither a PyTorch zip archive nor a pickle (it starts with bytes {shown})"


def _scan_zip(path: Path) -> CheckpointScan:
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not pickles:
                return CheckpointScan("foreign-zip", "a zip archive but not a PyTorch checkpoint (no data.pkl inside)")
            data = archive.read(pickles[0])
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        return CheckpointScan("damaged", f"a damaged or truncated checkpoint: the zip archive cannot be read "
                                         f"({_first_line(err)}); the file was cut off or changed after it was written")
    try:
        found, protocol = pickle_globals(io.BytesIO(data))
    except ValueError as err:
        return CheckpointScan("damaged", f"a damaged checkpoint: its data.pkl is not a complete pickle ({_first_line(err)})")
    return CheckpointScan("torch-zip", globals=found, protocol=protocol)


def _scan_legacy(path: Path) -> CheckpointScan:
    """The format before PyTorch 1.6: pickles of a magic number, the protocol version and system
    information, then the object, then the storage keys and raw storage bytes."""
    with open(path, "rb") as stream:
        try:
            first = list(pickletools.genops(stream))
        except ValueError as err:
            return CheckpointScan("damaged", f"starts like a pickle but is damaged ({_first_line(err)})")
        magic = next((arg for op, arg, _ in first if op.name in ("LONG1", "LONG4", "LONG")), None)
        if magic != torch.serialization.MAGIC_NUMBER:
            return CheckpointScan("pickle", "a plain Python pickle, not a PyTorch checkpoint "
                                            "(torch.load cannot read it)")
        try:
            found: set[str] = set()
            for _ in range(2):  # protocol version, system information
                found |= pickle_globals(stream)[0]
            objects, protocol = pickle_globals(stream)
        except ValueError as err:
            return CheckpointScan("damaged", f"a damaged or truncated checkpoint (legacy format): {_first_line(err)}")
    return CheckpointScan("torch-legacy", globals=found | objects, protocol=protocol)


def scan_checkpoint(path: str | Path) -> CheckpointScan:
    """Classify ``path`` from its bytes alone; nothing is unpickled. OSErrors other than a
    missing file (permission denied, ...) propagate."""
    path = Path(path)
    if path.is_dir():
        return CheckpointScan("folder", "a folder, not a checkpoint file")
    if not path.exists():
        return CheckpointScan("missing", "checkpoint not found")
    with open(path, "rb") as stream:
        head = stream.read(512)
    if not head:
        return CheckpointScan("empty", "an empty file (0 bytes), not a checkpoint; it was probably cut off "
                                       "while being written or copied")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _scan_zip(path)
    if head[0] == 0x80 and len(head) > 1 and head[1] <= pickle.HIGHEST_PROTOCOL:
        return _scan_legacy(path)
    return CheckpointScan(*_describe_start(head))
