"""Re-creates deploy/check/crds/schemas/node_modules from npm packages: the compiled JSON-schema validators
(ajv standalone code) of the custom resource kinds the chart renders, and the files of the same
package they import. What they import from other packages (@kubernetes-models/validate, the
runtime, @kubernetes-models/apimachinery and kubernetes-models, Kubernetes' own types) is installed by `npm ci`
from package.json/package-lock.json here (scripts/check-deploy does that).

Usage (needs npm and the npm registry; not run by CI, which uses the committed files):
    python3 deploy/check/crds/vendor.py

The packages and versions are pinned in PACKAGES; SOURCES.md says where each schema comes from.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = {
    "@kubernetes-models/keda": "2.0.0",
    "@kubernetes-models/prometheus-operator": "6.0.0",
    "@kubernetes-models/gateway-api": "2.0.0",
    "@kubernetes-models/cert-manager": "6.0.0",
    "@kubernetes-models/cloudnative-pg": "2.0.0",
}
# (apiVersion, kind) -> (package, schema module): the roots whose import closure is copied.
ROOTS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ("@kubernetes-models/keda", "_schemas/ComGithubKedacoreKedaV2ApisKedaV1alpha1ScaledObject.js"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("@kubernetes-models/prometheus-operator", "_schemas/ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1PrometheusRule.js"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("@kubernetes-models/prometheus-operator", "_schemas/ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1ServiceMonitor.js"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): ("@kubernetes-models/gateway-api", "_schemas/IoK8sSigsGatewayApiApisV1GRPCRoute.js"),
    ("cert-manager.io/v1", "Certificate"): ("@kubernetes-models/cert-manager", "_schemas/ComGithubCertManagerCertManagerPkgApisCertmanagerV1Certificate.js"),
    ("cert-manager.io/v1", "Issuer"): ("@kubernetes-models/cert-manager", "_schemas/ComGithubCertManagerCertManagerPkgApisCertmanagerV1Issuer.js"),
    ("postgresql.cnpg.io/v1", "Cluster"): ("@kubernetes-models/cloudnative-pg", "_schemas/ComGithubCloudnativePgCloudnativePgApiV1Cluster.js"),
    ("postgresql.cnpg.io/v1", "Database"): ("@kubernetes-models/cloudnative-pg", "_schemas/ComGithubCloudnativePgCloudnativePgApiV1Database.js"),
}
# A module specifier after `from`/`import`: relative or a package (a property named "from" in a
# minified validator is not one).
IMPORT = re.compile(r'(?:from|import)\s*"((?:\.{1,2}/|@|kubernetes-models/)[^"]+)"')


def resolve(pkg_dirs: dict[str, Path], pkg: str, spec: str, importer: Path) -> tuple[str, Path] | None:
    if spec.startswith("."):
        return pkg, (importer.parent / spec).resolve()
    m = re.match(r"(@[^/]+/[^/]+)/(.*)", spec)
    if not m or m.group(1) not in pkg_dirs:
        assert spec.startswith(("@kubernetes-models/validate", "@kubernetes-models/apimachinery", "kubernetes-models/")), f"unexpected import {spec!r}"
        return None  # installed by npm ci (package.json)
    target = pkg_dirs[m.group(1)] / m.group(2)
    return m.group(1), target if target.suffix == ".js" else target.with_name(target.name + ".js")


def main() -> None:
    out = HERE / "schemas" / "node_modules"
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        pkg_dirs = {}
        for pkg, version in PACKAGES.items():
            tgz = subprocess.run(["npm", "pack", f"{pkg}@{version}", "--silent"], cwd=tmp, check=True, capture_output=True, text=True).stdout.split()[-1]
            dest = Path(tmp) / pkg.replace("/", "__")
            with tarfile.open(Path(tmp) / tgz) as t:
                t.extractall(dest, filter="data")
            pkg_dirs[pkg] = dest / "package"
        todo = [(pkg, pkg_dirs[pkg] / path) for pkg, path in ROOTS.values()]
        seen: set[Path] = set()
        while todo:
            pkg, path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            rel = path.relative_to(pkg_dirs[pkg])
            (out / pkg / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, out / pkg / rel)
            for spec in IMPORT.findall(path.read_text()):
                if (found := resolve(pkg_dirs, pkg, spec, path)) is not None:
                    todo.append(found)
        for pkg in PACKAGES:
            if (out / pkg).exists():
                meta = json.loads((pkg_dirs[pkg] / "package.json").read_text())
                keep = {k: meta[k] for k in ("name", "version", "type", "license", "repository", "exports") if k in meta}
                (out / pkg / "package.json").write_text(json.dumps(keep, indent=2) + "\n")
                for lic in ("LICENSE",):
                    if (pkg_dirs[pkg] / lic).exists():
                        shutil.copy(pkg_dirs[pkg] / lic, out / pkg / lic)
    shutil.rmtree(HERE / "schemas" / "@kubernetes-models", ignore_errors=True)
    (HERE / "roots.json").write_text(json.dumps({f"{a} {k}": f"{p}/{m}" for (a, k), (p, m) in ROOTS.items()}, indent=2) + "\n")
    print(f"{len(seen)} files under {out}")


if __name__ == "__main__":
    main()
