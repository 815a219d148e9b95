"""Code of the chapter `pruning_zero_shot`."""
