"""The one kind of error a user sees: a single line saying what is wrong and how to fix it.

Each module raises its own subclass (``ConfigError``, ``DataError``, ``RunError``,
``LRFinderError``); the command line catches ``UserError`` and prints ``error: <message>``
with exit status 2, never a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """Bad input or a state the user can fix; the message is one line ending with the fix."""


class DamagedFileError(UserError):
    """A file the run needs is missing, truncated or not in its format; the message names it."""


def damaged_file(path, exc: BaseException | None = None) -> DamagedFileError:
    """The one-line error for a run file that is missing (``exc`` a FileNotFoundError or None) or unreadable.

    Args:
        path: the file.
        exc: what reading it raised.
    """
    if exc is None or isinstance(exc, FileNotFoundError):
        return DamagedFileError(f"{path} is missing; restore it from a copy or start a new run")
    return DamagedFileError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:120]}); restore it from a copy or start a new run")


class RunError(UserError):
    """A run cannot start or go on (launch, run directory, resume); the message says what to do."""


# EX_TEMPFAIL of sysexits.h, "try again later": the exit status of a run stopped by a signal.
PREEMPTED_EXIT = 75


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint; ``--resume`` continues it (not an
    error: the command exits with ``PREEMPTED_EXIT`` after the trainer said where it stopped)."""


def exit_with(error: BaseException | str, status: int = 2) -> None:
    """Print ``error: <message>`` as one line on stderr and exit.

    Args:
        error: the exception or message.
        status: the exit status (2: bad input, as argparse uses).
    """
    message = " ".join(str(error).split("\n"))
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one ``error:`` line and exit status 2, like every other bad input."""

    def error(self, message: str):
        """Exit with status 2 and the line ``error: <message>; see <prog> --help``, in place of argparse's usage text.

        Args:
            message: argparse's account of what is wrong with the arguments.
        """
        exit_with(f"{message}; see {self.prog} --help")


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts: an integer >= 1.

    Args:
        text: the option's value as given.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
