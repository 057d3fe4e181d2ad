"""
Saving received files safely.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chat.downloads import safe_name, save


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("photo.png", "photo.png"),
        ("../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("..", "file"),
        (".bashrc", "bashrc"),
        ("a\x00b\nc.txt", "a_b_c.txt"),
        ("", "file"),
    ],
)
def test_safe_name(name: str, safe: str) -> None:
    """Only a plain last component survives."""
    assert safe_name(name) == safe


def test_never_overwrites(tmp_path: Path) -> None:
    """A name already taken gets a number; the first file is untouched."""
    first = save(tmp_path, "report.pdf", b"one")
    second = save(tmp_path, "report.pdf", b"two")
    third = save(tmp_path, "report.pdf", b"three")
    assert [p.name for p in (first, second, third)] == [
        "report.pdf",
        "report (1).pdf",
        "report (2).pdf",
    ]
    assert first.read_bytes() == b"one"


def test_traversal_stays_inside(tmp_path: Path) -> None:
    """A hostile name is written inside the folder, nowhere else."""
    folder = tmp_path / "downloads"
    path = save(folder, "../../../../tmp/evil.sh", b"rm -rf /")
    assert path.parent == folder.resolve()
    assert not (tmp_path / "evil.sh").exists()


def test_symlink_in_folder_is_not_followed(tmp_path: Path) -> None:
    """A symlink already in the folder is not written through."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    os.symlink(outside, folder / "note.txt")
    path = save(folder, "note.txt", b"new")
    assert path.name == "note (1).txt"
    assert outside.read_bytes() == b"keep"
