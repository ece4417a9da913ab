"""Helpers shared by the tests: in-memory datasets, paths, worker scripts."""
