"""The benchmark's results: rows with medians and ratios, printed as a Markdown table."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field

DOCS_BEGIN = "<!-- benchmark table: begin (written by benchmarks/run.py) -->"
DOCS_END = "<!-- benchmark table: end -->"
# a table other than the full run's (``--scale``) has its own markers: "benchmark table scale: begin ..."


@dataclass
class Stat:
    """Samples of one measurement: seconds, MiB or a count."""

    samples: list[float]
    unit: str = "s"  # "s", "ms", "MiB" or "" (a count)
    label: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def text(self) -> str:
        if not self.samples:
            return "–"
        fmt = {"s": "{:.3f}", "ms": "{:.2f}", "MiB": "{:.0f}", "": "{:g}"}[self.unit]
        unit = f" {self.unit}" if self.unit else ""
        lo, hi = min(self.samples), max(self.samples)
        spread = f" ({fmt.format(lo)}–{fmt.format(hi)})" if len(self.samples) > 1 and lo != hi else ""
        label = f"{self.label}: " if self.label else ""
        return f"{label}{fmt.format(self.median)}{unit}{spread}"


@dataclass
class Row:
    """One line of the table: this store against its baseline, and the goal for their ratio."""

    what: str
    ours: Stat
    baseline: Stat | None
    goal: float | None  # the ratio must be at most this; None: reported only
    ratio: float | None = None
    note: str = ""
    met: bool | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline is not None and self.baseline.samples and self.baseline.median:
            self.ratio = self.ours.median / self.baseline.median
        if self.goal is not None and self.ratio is not None:
            self.met = self.ratio <= self.goal


def table(rows: list[Row]) -> str:
    lines = ["| what | pgmodels | baseline | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r.ratio is None else f"{r.ratio:.2f}×"
        goal = "–" if r.goal is None else f"≤ {r.goal:g}×"
        met = {True: "yes", False: "**no**", None: "–"}[r.met]
        what = f"{r.what} ({r.note})" if r.note else r.what
        lines.append(f"| {what} | {r.ours.text()} | {r.baseline.text() if r.baseline else '–'} | {ratio} | {goal} | {met} |")
    return "\n".join(lines)


def machine() -> dict:
    import mlflow
    import psycopg

    return {"python": platform.python_version(), "mlflow": mlflow.__version__, "psycopg": psycopg.__version__,
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def save(rows: list[Row], path: str, mode: str, extra: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = {"mode": mode, "machine": machine(), "rows": [asdict(r) for r in rows], "table": table(rows), **extra}
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, default=float)
    os.replace(path + ".tmp", path)


def update_docs(path: str, rows: list[Row], header: str, section: str = "full") -> None:
    """Replace the table between the markers (of ``section``: the run's mode) in docs/performance.md."""
    with open(path) as f:
        text = f.read()
    named = "benchmark table" if section == "full" else f"benchmark table {section}"
    begin, stop = DOCS_BEGIN.replace("benchmark table", named), DOCS_END.replace("benchmark table", named)
    start, end = text.index(begin) + len(begin), text.index(stop)
    with open(path, "w") as f:
        f.write(text[:start] + "\n" + header + "\n\n" + table(rows) + "\n" + text[end:])
