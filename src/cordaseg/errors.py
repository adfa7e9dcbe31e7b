"""Errors that describe a problem with the user's input (a file, key or value), not a bug.

The command line prints these as one line, without a traceback, and exits with status 2.
"""


class CordasegError(Exception):
    """Base class: the message names the file, key or value and says what is wrong."""


class DataError(CordasegError):
    """A dataset file or tree is missing, unreadable or inconsistent."""


class CheckpointError(CordasegError):
    """A checkpoint cannot be read, converted or does not fit the model."""
