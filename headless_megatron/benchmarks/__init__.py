"""Benchmarks behind ``headless-megatron bench <target>``; each prints a table with ratios side by side."""


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Print ``rows`` under ``header`` as aligned ``|`` columns: the first two (names) left-aligned,
    the figures right-aligned."""
    widths = [max(len(title), *(len(row[i]) for row in rows)) for i, title in enumerate(header)]
    print(" | ".join(title.ljust(w) for title, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
