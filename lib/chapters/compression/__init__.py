"""Code of the chapter `compression`."""
