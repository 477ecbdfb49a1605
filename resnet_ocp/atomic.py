"""Files written so that no reader ever sees half of one: write beside, then rename.

``os.replace`` is atomic on POSIX filesystems, so a file at its final name is either the old
version or the complete new one, whatever moment a run is killed at. Every writer in the
project (run directory, data cache, checkpoints' markers, pictures, benchmark records) goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resnet_ocp.errors import damaged_file


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Args:
        path: the final file (or directory) name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield str(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically.

    Args:
        path: the file to (re)place.
        text: its whole content.
    """
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically.

    Args:
        path: the file to (re)place.
        obj: anything ``json.dumps`` accepts.
    """
    write_text(path, json.dumps(obj, indent=2) + "\n")


def append_json_line(path: str | os.PathLike, record: Any) -> None:
    """Append ``record`` as one line to a JSON-lines file, atomically: the file is rewritten whole
    (benchmark records are kilobytes), so a kill leaves the old lines and no half of the new one.

    Args:
        path: the JSON-lines file (created if missing).
        record: anything ``json.dumps`` accepts.
    """
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    write_text(path, old + ("\n" if old and not old.endswith("\n") else "") + json.dumps(record) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or damaged one is a one-line ``DamagedFileError`` naming it.

    Args:
        path: the file.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise damaged_file(path, exc) from None
