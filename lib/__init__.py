"""Shared library of the reproducible-analyses book."""
