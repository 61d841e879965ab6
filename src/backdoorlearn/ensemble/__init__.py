"""Serve a model safely: combine a model with a detector or a repaired model."""
