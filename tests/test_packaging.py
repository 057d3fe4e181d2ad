"""
The distribution holds every package of chat: C{setup.cfg} lists packages
by hand (C{find:} cannot see C{twisted/plugins}), so a new one must be added
there.
"""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_setup_cfg_lists_every_package() -> None:
    """Every directory of chat/ with an __init__.py is a package in setup.cfg."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "chat").rglob("__init__.py")
    }
    assert found - listed == set()
    assert "twisted.plugins" in listed
