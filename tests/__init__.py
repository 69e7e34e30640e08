"""Test package (so tests can import tests.* helper modules)."""
