"""analysis.report: Markdown tables by hand, and the report's headings, tables and image links."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mcel_search.analysis.report import (
    ReportSection,
    format_cell,
    markdown_table,
    render_report,
    write_report,
)

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # content does not matter to the report

# ------------------------------------------------------------------------------------------ markdown_table


def test_markdown_table_by_hand():
    df = pd.DataFrame(
        {
            "run|id": ["a|b", "plain", "multi\nline"],
            "clean_acc": [91.2345, np.nan, 7.0],
            "bits": [8, 4, 1],
            "ok": [True, False, True],
            "note": ["x", None, "back\\slash"],
        }
    )
    assert markdown_table(df) == "\n".join(
        [
            "| run\\|id | clean_acc | bits | ok | note |",
            "|:---|---:|---:|:---|:---|",
            "| a\\|b | 91.23 | 8 | True | x |",
            "| plain |  | 4 | False |  |",
            "| multi<br>line | 7.00 | 1 | True | back\\slash |",
        ]
    )
    assert markdown_table(df[["clean_acc"]], floatfmt=".1f").splitlines()[2:] == [
        "| 91.2 |",
        "|  |",
        "| 7.0 |",
    ]


def test_markdown_table_pipe_after_backslash_stays_escaped():
    # GFM reads "\\" as an escaped backslash, so "\\|" would end the cell: the backslash is doubled too.
    assert markdown_table(pd.DataFrame({"c": ["a\\|b"]})).splitlines()[2] == "| a\\\\\\|b |"
    assert markdown_table(pd.DataFrame({"c": ["a\\\\|b"]})).splitlines()[2] == "| a\\\\\\\\\\|b |"


def test_markdown_table_every_row_has_the_column_count():
    df = pd.DataFrame({"a": ["|", "||", "x|y|z"], "b": [1.5, 2.25, -3.0]})
    for line in markdown_table(df).splitlines():
        assert len(re.findall(r"(?<!\\)\|", line)) == 3  # 2 columns: 3 unescaped pipes


def test_markdown_table_edge_cases():
    empty_rows = pd.DataFrame({"a": pd.Series([], dtype=float), "b": pd.Series([], dtype=object)})
    assert markdown_table(empty_rows) == "| a | b |\n|---:|:---|"
    assert markdown_table(pd.DataFrame()) == "_(empty table)_"
    indexed = pd.DataFrame({"v": [0.5]}, index=pd.Index(["r1"], name="run"))
    assert markdown_table(indexed, index=True) == "| run | v |\n|:---|---:|\n| r1 | 0.50 |"
    with pytest.raises(TypeError):
        markdown_table([[1, 2]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (float("nan"), ""),
        (pd.NA, ""),
        (np.float32(0.5), "0.50"),
        (np.int64(3), "3"),
        (np.bool_(True), "True"),
        (float("inf"), "inf"),
        ("text", "text"),
    ],
)
def test_format_cell(value, expected):
    assert format_cell(value) == expected


# ----------------------------------------------------------------------------------------------- report


def make_section(tmp_path: Path, name: str, n_front: int) -> ReportSection:
    figs = tmp_path / "out" / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    pareto = figs / f"{name} pareto.png"  # a space: the link must still resolve
    ber = figs / f"{name}-ber.png"
    for p in (pareto, ber):
        p.write_bytes(PNG_BYTES)
    front = pd.DataFrame(
        {
            "run_id": [f"{name}-{i}" for i in range(n_front)],
            "margin": np.linspace(0.1, 1.0, n_front),
            "clean_acc": np.linspace(0.9, 0.95, n_front),
            "ber_acc": np.linspace(0.8, 0.6, n_front),
        }
    )
    summary = {
        "rule": "max ber_acc s.t. clean_acc >= baseline - 1%",
        "selected": f"{name}-0",
        "clean_acc": 0.91234,
    }
    return ReportSection(
        title=f"digits / {name} / 8 bits",
        summary=summary,
        front=front,
        figures={"Pareto front": pareto, "BER curves": str(ber)},
        notes=("3 trials pruned", "1 trial errored"),
    )


def table_after(text: str, heading: str) -> list[str]:
    """The lines of the first table after ``heading``."""
    lines = text.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return rows


def test_write_report(tmp_path):
    sections = [make_section(tmp_path, "mlp", 3), make_section(tmp_path, "cnn", 5)]
    out_dir = tmp_path / "out"
    path = write_report(out_dir, sections, title="MCEL search")
    assert path == out_dir / "report.md"
    assert sorted(p.name for p in out_dir.iterdir()) == ["figures", "report.md"]  # no temp file left
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# MCEL search\n")

    for section, n in zip(sections, (3, 5), strict=True):
        heading = f"## {section.title}"
        assert heading in text.splitlines()
        body = text.split(heading, 1)[1].split("\n## ", 1)[0]
        summary = table_after(body, "### Selection")
        assert len(summary) == 2 + len(section.summary)
        assert "| clean_acc | 0.9123 |" in summary
        front = table_after(body, f"### Pareto front ({n} runs)")
        assert len(front) == 2 + n
        assert front[0] == "| run_id | margin | clean_acc | ber_acc |"
        assert [row.split(" | ")[0][2:] for row in front[2:]] == list(section.front["run_id"])
        links = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", body)
        assert [cap for cap, _ in links] == ["Pareto front", "BER curves"]
        for _, link in links:
            assert not Path(link).is_absolute()
            target = out_dir / link.replace("%20", " ")
            assert target.is_file()
        assert "- 3 trials pruned" in body and "- 1 trial errored" in body


def test_write_report_is_deterministic_and_overwrites(tmp_path):
    sections = [make_section(tmp_path, "mlp", 2)]
    first = write_report(tmp_path / "out", sections, "R").read_bytes()
    second = write_report(tmp_path / "out", sections, "R").read_bytes()
    assert first == second


def test_report_empty_front_and_missing_figure(tmp_path):
    empty = ReportSection("nothing finished", {}, pd.DataFrame(columns=["run_id", "clean_acc"]), {})
    text = render_report([empty], "R", tmp_path)
    assert "## nothing finished" in text
    assert "_No Pareto front (no completed trials)._" in text
    assert "_No selection._" in text

    missing = ReportSection("s", {}, pd.DataFrame(), {"gone": tmp_path / "gone.png"})
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        write_report(tmp_path / "out", [missing], "R")
    assert not (tmp_path / "out" / "report.md").exists()


def test_report_imports_no_plotting_or_tracking():
    code = (
        "import sys, mcel_search.analysis.report\n"
        "bad = [m for m in ('matplotlib', 'mlflow', 'ray', 'optuna') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
