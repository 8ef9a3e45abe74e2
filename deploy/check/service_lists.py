"""Every service is listed wherever the list of services appears: the Dockerfile's listen
addresses and EXPOSE, the chart (Chart.yaml's description, values.yaml's ports), the compose
stack, the client READMEs and the docs that name the ports. The services and their ports are
read from the services' own code (the `SHOPMESH_<SVC>_LISTEN` default in services/*/src/config.rs),
so a new service fails this check until each list names it.

Used by check_container.py (scripts/check-deploy).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def service_ports() -> dict[str, int]:
    """{service: gRPC port} from each service crate's listen default."""
    out = {}
    for config in sorted((ROOT / "services").glob("*/src/config.rs")):
        text = config.read_text()
        m = re.search(r'env = "SHOPMESH_([A-Z]+)_LISTEN",[^)]*?default_value = "127\.0\.0\.1:(\d+)"', text, re.S)
        if m:
            out[m.group(1).lower()] = int(m.group(2))
    assert {"user", "order", "payment"} <= set(out), f"services found in services/*/src/config.rs: {out}"
    return out


def check_service_lists() -> str:
    services = service_ports()
    missing: list[str] = []

    def need(ok: bool, where: str, what: str) -> None:
        if not ok:
            missing.append(f"{where}: {what}")

    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = re.search(r"^EXPOSE (.*)$", dockerfile, re.M)
    values = yaml.safe_load((ROOT / "helm" / "shopmesh" / "values.yaml").read_text())["services"]
    description = yaml.safe_load((ROOT / "helm" / "shopmesh" / "Chart.yaml").read_text())["description"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose_ports = compose.get("x-ports", {})
    python_readme = (ROOT / "clients" / "python" / "README.md").read_text()
    go_readme = (ROOT / "clients" / "go" / "README.md").read_text()
    deploy_md = (ROOT / "docs" / "deploy.md").read_text()
    clients_md = (ROOT / "docs" / "clients.md").read_text()
    for svc, port in services.items():
        need(f"SHOPMESH_{svc.upper()}_LISTEN=0.0.0.0:{port}" in dockerfile, "Dockerfile", f"ENV SHOPMESH_{svc.upper()}_LISTEN=0.0.0.0:{port}")
        need(bool(exposed) and str(port) in exposed.group(1).split(), "Dockerfile", f"EXPOSE {port}")
        need(re.search(rf"\b{svc}\b", description) is not None, "helm/shopmesh/Chart.yaml", f"{svc} in the description")
        need((values.get(svc) or {}).get("port") == port, "helm/shopmesh/values.yaml", f"services.{svc}.port: {port}")
        need(svc in compose.get("services", {}), "docker-compose.yml", f"service {svc}")
        need(str(compose_ports.get(svc, "")).endswith(f":{port}:{port}"), "docker-compose.yml", f"x-ports.{svc} publishing {port}")
        need(f"`{svc}`" in python_readme, "clients/python/README.md", f"`{svc}` among the modules")
        need(f"`{svc}v1`" in go_readme, "clients/go/README.md", f"package `{svc}v1`")
        need(f"shopmesh serve {svc}" in deploy_md, "docs/deploy.md", f"`shopmesh serve {svc}` in the compose/serve example")
        need(re.search(rf"\b{port}\b", deploy_md.split("The image listens on", 1)[-1].split(")", 1)[0]) is not None,
             "docs/deploy.md", f"{port} among the image's ports")
        need(f":{port}`" in clients_md, "docs/clients.md", f"{svc} on :{port} among the mesh's addresses")
    assert not missing, f"{len(missing)} lists miss a service: " + "; ".join(missing)
    return f"{len(services)} services ({', '.join(f'{s}:{p}' for s, p in services.items())}) in 11 lists"
