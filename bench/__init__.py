"""Benchmarks: each bench/<name>.py prints its table and appends its run to docs/benchmarks.md."""
