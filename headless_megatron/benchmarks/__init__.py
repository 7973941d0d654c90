"""Benchmarks behind ``headless-megatron bench <target>``; each prints a table with ratios side by side."""
