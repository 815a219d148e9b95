"""What two or more chapters use: data registry, encoders, training loop, cached states,
pruning, compression, latency, optimizers."""
