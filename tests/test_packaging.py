"""One import name: the installed distribution is `mcel_search`, a user's own `core/`, `search/` or
`analysis/` folder cannot shadow it, and no module of ours loads under a second name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MCEL = Path(sys.executable).with_name("mcel")


def _shadowing_folders(where: Path) -> None:
    """Folders named like our subpackages, each a package that fails loudly if it is ever imported."""
    for name in ("core", "search", "analysis"):
        (where / name).mkdir()
        (where / name / "__init__.py").write_text(
            f"raise SystemExit('the user folder {name}/ was imported')\n"
        )


def test_a_users_folders_named_core_search_analysis_do_not_shadow_the_package(tmp_path: Path) -> None:
    _shadowing_folders(tmp_path)
    code = "import mcel_search.analysis.pareto, mcel_search.search.cli, mcel_search.core.losses; print('ok')"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    helped = subprocess.run([str(MCEL), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "usage: mcel" in helped.stdout, helped.stderr


def test_a_folder_of_ours_refuses_to_load_under_a_second_name() -> None:
    """Run from the repository root, `import core` would load core/ as a second copy of mcel_search.core."""
    for name in ("core", "search", "analysis"):
        proc = subprocess.run(
            [sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode != 0
        assert f"ImportError: this folder is the package 'mcel_search.{name}'" in proc.stderr, proc.stderr
