"""Progress for long work: a live bar on a terminal; elsewhere (logs, CI) one line every 5% of the work."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console


@contextlib.contextmanager
def progress(
    total: int, description: str, *, start: int = 0, unit: str = "steps", enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """Yields ``advance(count=1, note="")``: ``count`` more units done; ``note`` shows beside the bar."""
    if not enabled or total <= 0:
        yield lambda count=1, note="": None
        return
    console = Console(stderr=True)
    began, state = time.perf_counter(), {"done": start, "last_line": start}
    if not console.is_terminal:
        every = max(1, total // 20)

        def report(count: int = 1, note: str = "") -> None:
            state["done"] += count
            if state["done"] - state["last_line"] >= every or state["done"] >= total:
                state["last_line"] = state["done"]
                elapsed = time.perf_counter() - began
                rate = (state["done"] - start) / elapsed if elapsed > 0 else 0.0
                extra = f", {note}" if note else ""
                console.print(
                    f"{description}: {state['done']}/{total} {unit}, {rate:.2f} {unit}/s{extra}",
                    highlight=False,
                    markup=False,
                )

        yield report
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[note]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total, completed=start, rate="", note="")

        def advance(count: int = 1, note: str = "") -> None:
            state["done"] += count
            elapsed = time.perf_counter() - began
            rate = f"{(state['done'] - start) / elapsed:.2f} {unit}/s" if elapsed > 0 else ""
            bar.update(task, advance=count, rate=rate, note=note)

        yield advance
