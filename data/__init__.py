"""Data contracts, readers, adapters for public formats, and the seed-calibrated synthetic generator."""
