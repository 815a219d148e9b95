"""The book's machinery: runner, site, profiles, records and verdicts, statistics,
chapter API. No science."""
