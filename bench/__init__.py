"""Benchmarks: the raw engines in-process versus the server over HTTP, in one run."""
