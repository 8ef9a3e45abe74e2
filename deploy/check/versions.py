"""One version for everything the project ships: the workspace's `version` in Cargo.toml (the
crates, the binary, the image's label) is the version of the crates' path dependencies on each
other, the Helm chart (and its appVersion), the Python package and the TypeScript package.
`scripts/set-version X.Y.Z` sets them all; this check finds any that was set by hand and missed.

Used by check_container.py (scripts/check-deploy).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def check_versions() -> str:
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]
    cargo = workspace["package"]["version"]
    chart = yaml.safe_load((ROOT / "helm" / "shopmesh" / "Chart.yaml").read_text())
    found = {
        "helm/shopmesh/Chart.yaml version": str(chart["version"]),
        "helm/shopmesh/Chart.yaml appVersion": str(chart["appVersion"]),
        "clients/python/pyproject.toml": tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]["version"],
        "clients/typescript/package.json": json.loads((ROOT / "clients" / "typescript" / "package.json").read_text()).get("version", "none"),
        "Dockerfile ARG VERSION": (re.search(r"^ARG VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M) or [None, "none"])[1],
    }
    # The crates as each other's dependencies (the version crates.io resolves them at).
    for name, dep in workspace.get("dependencies", {}).items():
        if isinstance(dep, dict) and "path" in dep:
            found[f"Cargo.toml [workspace.dependencies] {name}"] = dep.get("version", "none")
    wrong = {where: v for where, v in found.items() if v != cargo}
    assert not wrong, f"not the workspace's version {cargo} (Cargo.toml): {wrong}"
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", cargo), f"{cargo} is not a SemVer version"
    return f"{cargo} in Cargo.toml and {len(found)} other places"
