"""What the operator commands print: aligned tables, JSON, messages, and progress bars (stderr, TTY only).

Data goes to stdout, so `dray ... --json | jq` and `dray consume ... > file` stay clean; progress and notes go to
stderr. Tables are plain aligned text (no colours, no box drawing) so that they paste and grep well."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any, Iterable, Sequence


def print_json(doc: Any, *, lines: bool = False) -> None:
    """One JSON document (indented), or one compact object per line for record streams (lines=True)."""
    if lines:
        sys.stdout.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def note(message: str) -> None:
    """A line for the human at the terminal, on stderr (never mixed with data on stdout)."""
    print(message, file=sys.stderr, flush=True)


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 partition', '2 partitions' (words: an irregular plural)."""
    return f"{n} {word if n == 1 else words or word + 's'}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns separated by two spaces; numbers right-aligned, everything else left-aligned; None shows as '-'."""
    rows = [list(r) for r in rows]
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    right = [any(_numeric(r[i]) for r in rows) and all(_numeric(r[i]) or r[i] is None for r in rows)
             for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if right[i] else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    return "\n".join([line([h.upper() for h in headers]), *(line(r) for r in cells)])


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    print(format_table(headers, rows))


def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """'name: value' lines with the values aligned."""
    width = max((len(k) for k, _ in pairs), default=0) + 1
    for k, v in pairs:
        print(f"{(k + ':').ljust(width)} {_cell(v)}")


def text_or_base64(data: bytes | None, field: str, doc: dict) -> None:
    """Put data in doc[field] as text if it is UTF-8, else as base64 with doc[field + '_encoding'] = 'base64'."""
    if data is None:
        doc[field] = None
        return
    try:
        doc[field] = data.decode("utf-8")
    except UnicodeDecodeError:
        doc[field] = base64.b64encode(data).decode("ascii")
        doc[field + "_encoding"] = "base64"


class Progress:
    """A progress bar on stderr, shown only when stderr is a terminal (and never in --json runs' stdout).

        with Progress("producing", total=None, unit="records") as bar:
            bar.advance(1)

    total=None shows a running count; a known total shows a bar. Without a TTY every call is a no-op."""

    def __init__(self, description: str, *, total: float | None = None, unit: str = "records",
                 enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._description = description
        self._total = total
        self._unit = unit
        self._progress = None
        self._task = None

    def __enter__(self) -> "Progress":
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        if self._total is None:
            columns = [SpinnerColumn(), TextColumn("{task.description}"),
                       TextColumn("{task.completed:,.0f} " + self._unit), TimeElapsedColumn()]
        else:
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn(self._unit), TimeElapsedColumn()]
        # Lines printed meanwhile go above the bar, unless stdout is not the terminal (then they stay on stdout).
        self._progress = RichProgress(*columns, console=Console(file=sys.stderr), transient=True,
                                      refresh_per_second=8, redirect_stdout=sys.stdout.isatty(),
                                      redirect_stderr=False)
        self._progress.__enter__()
        self._task = self._progress.add_task(self._description, total=self._total)
        return self

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def describe(self, description: str) -> None:
        """Change the text before the bar (what is being done now)."""
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None
