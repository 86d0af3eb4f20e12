"""Helpers for developers and tests that are not part of the shipped packages."""
