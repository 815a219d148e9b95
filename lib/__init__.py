"""Shared library of the reproducible-analyses book: ``ch = lib.start("name", globals())``."""

from lib.book.chapter import start

__all__ = ["start"]
