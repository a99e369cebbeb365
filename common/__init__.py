"""Kimchi-premium paper trader: the domain core (plain Python, no Ray)."""
