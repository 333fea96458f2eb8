"""The project's own test helpers and benchmark harness (never shipped in a wheel)."""
