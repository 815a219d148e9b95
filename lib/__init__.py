"""Shared library of the reproducible-analyses book: ``ch = lib.start("name", globals())``."""
from lib.chapter import start

__all__ = ["start"]
