"""Code of the chapter `peft` (parameter-efficient fine-tuning, measured)."""
