"""Code of the chapter `differentiable_dp`."""
