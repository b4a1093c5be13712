"""Files that are either their old content or the complete new one: no crash, signal or full disk truncates them."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` with what ``write`` puts into the binary file it is given, atomically.

    ``write`` fills a temporary file in the same folder (so the rename cannot cross file systems); the file is flushed
    and fsynced (a full disk shows up here, as ``OSError(ENOSPC)``, on file systems that allocate late) and then
    renamed over ``path`` with ``os.replace``; the folder is fsynced so the rename survives a power loss. On any error
    or interruption the temporary file is removed and ``path`` keeps its old content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as f:  # created with the umask's permissions, as a plain open() would
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))
