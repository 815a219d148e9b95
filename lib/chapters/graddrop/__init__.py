"""Code of the chapter `graddrop`."""
