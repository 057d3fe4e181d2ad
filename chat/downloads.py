"""
Saving received files: inside one folder, never overwriting, never outside.

A file name comes from another user, so it is untrusted: only its last path
component is kept, characters that are unsafe in a file name are replaced,
and the file is created with O_EXCL (a name already taken, even by a
symbolic link, gets " (1)", " (2)", ... before its extension), directly in
the (resolved) downloads folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:]")


def safe_name(name: str) -> str:
    """
    A harmless file name from an untrusted one.
    """
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip().lstrip(".")
    return name[:200] or "file"


def save(folder: Path, name: str, content: bytes) -> Path:
    """
    Write C{content} to a new file in C{folder} named after C{name}.

    @return: the path written.
    @raise ValueError: if the path would leave C{folder}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    base = safe_name(name)
    stem, dot, extension = base.rpartition(".")
    if not stem:
        stem, dot, extension = base, "", ""
    for attempt in range(10_000):
        candidate = base if attempt == 0 else f"{stem} ({attempt}){dot}{extension}"
        path = root / candidate
        if path.parent != root or candidate in (".", ".."):
            raise ValueError(f"refusing to write outside {root}: {name!r}")
        try:
            # O_EXCL also refuses an existing symbolic link: never written
            # through.
            descriptor = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644
            )
        except FileExistsError:
            continue
        with os.fdopen(descriptor, "wb") as f:
            f.write(content)
        return path
    raise ValueError(f"too many files named {base!r} in {root}")
