"""The key names are compared on: its own module so a reader (`cabinet client list`) finds a firm
without importing the domain's dependencies."""

from __future__ import annotations

from daemon.errors import InvalidInput


def name_key(name: str) -> str:
    """The form names are compared on: case and inner spacing do not make a new entry."""
    key = " ".join(name.split()).casefold()
    if not key:
        raise InvalidInput("name.empty")
    return key
