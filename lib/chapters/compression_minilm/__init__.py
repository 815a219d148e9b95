"""Code of the chapter `compression_minilm`."""
