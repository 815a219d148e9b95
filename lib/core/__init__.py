"""What two or more chapters use: data registry, encoders, training loop, pruning, compression, latency, optimizers."""
