"""
pytest configuration: keep the chat loggers at debug so tests can observe
every event.
"""

from __future__ import annotations

from chat import logs

logs.set_level("debug")

pytest_plugins = ["tests.postgres"]
