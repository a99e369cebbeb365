"""Thin Ray actors around the common/ domain objects."""
