"""Write ``requirements.lock``: every distribution a cluster node installs, pinned (``make lock``).

Resolves ``-e . "ray[default,tune]==<project pin>"`` with pip's resolver without installing anything
(``pip install --dry-run --ignore-installed --report``) and writes one ``name==version`` line per
distribution, the project itself left out. The nodes install with it as a constraints file (``pip
install -c requirements.lock -e ~/mcel-search "ray[default,tune]==..."``), so every worker gets the head's
versions instead of resolving unpinned transitive dependencies on its own; a distribution a node's Python
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


def project_ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.match(r"ray(\[|==)", d)]
    return pin.split("==")[1]


def main() -> int:
    ray = f"ray[default,tune]=={project_ray_pin()}"
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
                str(ROOT),
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
        f"# Resolved for: -e . {ray}; Python {platform.python_version()}, {sys.platform} {platform.machine()}.",
        "# Used as a constraints file: pip install -c requirements.lock -e ~/mcel-search 'ray[default,tune]==...'",
    ]
    (ROOT / "requirements.lock").write_text("\n".join(header + [f"{n}=={v}" for n, v in pins]) + "\n")
    print(f"requirements.lock: {len(pins)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
