"""earthembed."""
