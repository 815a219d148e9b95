"""Code of the chapter `heavy_tailed_imbalance`."""
