"""Fake command-line tools for tests."""
