"""Chapter 07: self-distilled quantisation across languages."""
