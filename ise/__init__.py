"""The ``ise`` command: one entry point above the server and the benchmarks."""
