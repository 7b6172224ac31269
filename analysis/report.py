"""Markdown report of a search: one section per (dataset, architecture, bits).

:func:`write_report` writes ``<out_dir>/report.md`` with, per :class:`ReportSection`, a ``##`` heading, the
selection summary as a two-column key / value table, the Pareto-front table, the figures (image links
relative to ``out_dir``) and optional notes. :func:`markdown_table` renders a DataFrame as a GitHub-flavoured
Markdown table without any third-party renderer (no ``tabulate``).

The output is deterministic (no timestamps), so two reports of the same data are byte-identical. This module
works on tables and files only: it imports neither ray, optuna nor mlflow.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from ..core.atomic import atomic_write

__all__ = ["REPORT_NAME", "ReportSection", "format_cell", "markdown_table", "render_report", "write_report"]

REPORT_NAME = "report.md"
_PIPE = re.compile(r"(\\*)\|")
MISSING = ""
"""How a missing value (None, NaN, NaT, pd.NA) is rendered in a table cell."""


@dataclass(frozen=True)
class ReportSection:
    """One section of the report (typically one dataset / architecture / bits study).

    ``summary``: the selection summary (key -> value, rendered as a key / value table, in mapping order);
    ``front``: the Pareto front (every column rendered; an empty frame renders as a "no front" line);
    ``figures``: caption -> PNG path (relative paths are relative to the current directory, like any
    ``Path``; the link written into the report is relative to the report's folder);
    ``notes``: free-text lines, rendered as a bullet list.
    """

    title: str
    summary: Mapping[str, Any]
    front: pd.DataFrame
    figures: Mapping[str, Path | str]
    notes: Sequence[str] = ()


# ---------------------------------------------------------------------------------------------- cells


def _escape(text: str) -> str:
    """Make ``text`` safe inside a table cell: ``|`` -> ``\\|``, line breaks -> ``<br>``.

    GFM splits a row on every ``|`` not escaped by a backslash, where ``\\\\`` is itself an escape: so the
    backslashes right before a pipe are doubled too (``a\\|b`` -> ``a\\\\\\|b``), which renders the text
    as given.
    """
    text = _PIPE.sub(lambda m: 2 * m.group(1) + "\\|", text)
    return text.replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return False


def format_cell(value: Any, floatfmt: str = ".2f") -> str:
    """The text of one table cell (not yet escaped).

    Missing values (None, NaN, NaT, pd.NA) -> ``MISSING`` (empty); bools -> ``True`` / ``False``; integers
    (Python or numpy) -> plain digits; other reals -> ``format(value, floatfmt)`` (``inf`` stays ``inf``);
    everything else -> ``str(value)``.
    """
    if _is_missing(value):
        return MISSING
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return format(float(value), floatfmt)
    return str(value)


def _is_numeric_column(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".2f", index: bool = False) -> str:
    """``df`` as a GitHub-flavoured Markdown table: header, alignment row, one line per row, no final newline.

    Cells are formatted by :func:`format_cell` with ``floatfmt``; ``|`` in headers and cells is escaped as
    ``\\|`` and line breaks become ``<br>``. Numeric columns are right-aligned (``---:``), the others
    left-aligned (``:---``). ``index=True`` adds the index as a first column (named after the index, or
    empty). A frame without rows renders the header and alignment rows only; one without columns renders as
    ``_(empty table)_``.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"markdown_table needs a pandas DataFrame, got {type(df).__name__}")
    if index:
        names = ["" if n is None else n for n in df.index.names]
        df = df.reset_index(names=names, allow_duplicates=True)
    if df.columns.size == 0:
        return "_(empty table)_"

    columns = [df.iloc[:, i] for i in range(df.columns.size)]  # positional: tolerates duplicated names
    header = "| " + " | ".join(_escape(str(c)) for c in df.columns) + " |"
    align = "|" + "|".join("---:" if _is_numeric_column(s) else ":---" for s in columns) + "|"
    lines = [header, align]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_escape(format_cell(v, floatfmt)) for v in row) + " |")
    return "\n".join(lines)


def _summary_table(summary: Mapping[str, Any], floatfmt: str) -> str:
    rows = [(_escape(str(k)), _escape(format_cell(v, floatfmt))) for k, v in summary.items()]
    lines = ["| key | value |", "|:---|:---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _alt_text(caption: str) -> str:
    return _one_line(caption).replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _figure_link(path: Path | str, base_dir: Path) -> str:
    """Link target of ``path`` relative to ``base_dir``: POSIX separators, percent-encoded (spaces etc.)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"figure {str(path)!r} does not exist (write the figures before the report)")
    rel = os.path.relpath(path.resolve(), base_dir.resolve())
    return quote(Path(rel).as_posix(), safe="/._-~")


def render_report(
    sections: Sequence[ReportSection], title: str, base_dir: str | os.PathLike, floatfmt: str = ".4g"
) -> str:
    """The Markdown text :func:`write_report` writes; figure links are relative to ``base_dir``.

    Raises ``FileNotFoundError`` when a figure file does not exist.
    """
    base_dir = Path(base_dir)
    out = [f"# {_one_line(title)}", ""]
    if not sections:
        out += ["_No sections._", ""]
    for section in sections:
        out += [f"## {_one_line(section.title)}", ""]
        out += ["### Selection", ""]
        if section.summary:
            out += [_summary_table(section.summary, floatfmt), ""]
        else:
            out += ["_No selection._", ""]
        n = len(section.front)
        out += [f"### Pareto front ({n} run{'s' if n != 1 else ''})", ""]
        if n:
            out += [markdown_table(section.front, floatfmt=floatfmt), ""]
        else:
            out += ["_No Pareto front (no completed trials)._", ""]
        if section.figures:
            out += ["### Figures", ""]
            for caption, path in section.figures.items():
                out += [
                    f"**{_one_line(caption)}**",
                    "",
                    f"![{_alt_text(caption)}]({_figure_link(path, base_dir)})",
                    "",
                ]
        if section.notes:
            out += ["### Notes", ""]
            out += [f"- {_one_line(note)}" for note in section.notes]
            out += [""]
    return "\n".join(out).rstrip("\n") + "\n"


def write_report(
    out_dir: str | os.PathLike,
    sections: Sequence[ReportSection],
    title: str,
    floatfmt: str = ".4g",
) -> Path:
    """Write ``<out_dir>/report.md`` (see :func:`render_report`) atomically and return its path.

    ``out_dir`` is created if needed. The text goes to a temporary file in ``out_dir`` that is flushed,
    fsynced and renamed over ``report.md``, so a reader sees the old or the new report, never a partial
    one. ``floatfmt`` formats the floats of the summary and front tables (``.4g`` keeps fractions such as
    0.9123 and percentages such as 91.23 readable alike); pre-format values as strings for anything else.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = render_report(sections, title, out_dir, floatfmt=floatfmt)
    target = out_dir / REPORT_NAME
    with atomic_write(target, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return target
