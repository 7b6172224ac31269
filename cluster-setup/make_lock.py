"""Write ``requirements.lock``: every distribution a cluster node installs, pinned (``make lock``).

Resolves ``-e ".[dev]" "ray[default,tune]<the project's range>"`` with pip's resolver without installing anything
(``pip install --dry-run --ignore-installed --report``) and writes one ``name==version`` line per
distribution, the project itself left out. ``make install``, ``.ci/run`` and the cluster nodes install with it
as a constraints file (``pip install -c requirements.lock -e ...``), so a fresh machine and every worker get
the versions the tests passed with instead of resolving the ranges of ``pyproject.toml`` on their own (the
development tools are pinned too: constraints only pin what is installed, so the nodes skip them); a distribution a node's Python
needs that this resolution did not (an environment marker) is still installed, unpinned.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def project_ray_range() -> str:
    """The version specifier of the project's Ray requirement, e.g. ``>=2.60,<2.61``."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [d for d in deps if re.match(r"ray(\[|[<>=!~])", d)]
    return re.sub(r"^ray(\[[^\]]*\])?", "", req).strip()


def main() -> int:
    ray = f"ray[default,tune]{project_ray_range()}"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                "-e",
                f"{ROOT}[dev]",
                ray,
            ],
            check=True,
        )
        items = json.loads(report.read_text())["install"]
    pins = sorted(
        {(it["metadata"]["name"].lower().replace("_", "-"), it["metadata"]["version"]) for it in items}
        - {("mcel-search", it["metadata"]["version"]) for it in items}
    )
    header = [
        "# Every distribution a cluster node installs, pinned: `make lock` (cluster-setup/make_lock.py) writes it.",
        f"# Resolved for: -e .[dev] {ray}; Python {platform.python_version()}, {sys.platform} {platform.machine()}.",
        "# Used as a constraints file (make install, .ci/run, cluster.yaml): pip install -c requirements.lock -e ...",
    ]
    (ROOT / "requirements.lock").write_text("\n".join(header + [f"{n}=={v}" for n, v in pins]) + "\n")
    print(f"requirements.lock: {len(pins)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
