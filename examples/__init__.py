"""Example services (see each package's README)."""
