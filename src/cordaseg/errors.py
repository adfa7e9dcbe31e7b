"""Errors that describe a problem with the user's input (a file, key or value), not a bug.

The command line prints these as one line, without a traceback, and exits with status 2.
"""

import re

# How PyTorch's DataLoader re-raises an error of a worker process: the type is kept, the message
# becomes the worker's whole traceback, whose last line is "<module>.<Type>: <original message>".
_WORKER_WRAPPER = "in DataLoader worker process"
_TRACEBACK_LAST_LINE = re.compile(r"^(?:[\w.]+\.)?\w+(?:Error|Exception): ")


def one_line(message: str) -> str:
    """``message`` as one line: the original message of an error re-raised from a DataLoader
    worker (not the worker's traceback), other multi-line messages joined."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and _WORKER_WRAPPER in lines[0]:
        return _TRACEBACK_LAST_LINE.sub("", lines[-1], count=1)
    return " ".join(lines)


class CordasegError(Exception):
    """Base class: the message names the file, key or value and says what is wrong."""


class DataError(CordasegError):
    """A dataset file or tree is missing, unreadable or inconsistent."""


class CheckpointError(CordasegError):
    """A checkpoint cannot be read, converted or does not fit the model."""
