"""Benchmarks: sweeps of solver x NFE x grid, tables, plots and reports."""
