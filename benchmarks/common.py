"""Shared helpers for the benchmark scripts: machine description and a small results table."""

from __future__ import annotations

import os
import platform as _platform


def machine() -> str:
    return f"{os.cpu_count()} cores, {_platform.machine()}, Python {_platform.python_version()}"


def print_table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    cells = [tuple(str(c) for c in header), *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}  ({machine()})")
    for n, row in enumerate(cells):
        print("  ".join(cell.rjust(widths[i]) if n and i else cell.ljust(widths[i]) for i, cell in enumerate(row)))
