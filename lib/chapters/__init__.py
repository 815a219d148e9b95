"""One package per chapter (its command-line name); each has a study.py whose results feed
the records."""
