"""Frozen encoders, one module per modality, and the feature store (arrays + masks)."""
