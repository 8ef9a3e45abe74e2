"""Runs the client examples against the mesh's secure default, as a caller of another team meets
it: each service its own process with mutual TLS (certificates from `shopmesh dev-certs`), the
authorization policy (deploy/authz-policy.json plus one rule admitting the caller, as the chart's
`callers` value renders it) and bearer tokens on (a JWKS made here); the user service as two
replicas, so a client's round_robin has two addresses to spread over.

The caller `reports` gets a certificate from the mesh's CA (`shopmesh issue-certificate`, as
docs/clients.md says for the chart's CA) and may call the user, catalog and order services, not
payment. Each example command is run with the mesh described in SHOPMESH_* variables (see
clients/secure/README.md) and must exit 0; after them both user replicas must have served calls.

Usage: run_mesh.py path/to/shopmesh -- example-command [args] [-- another-command …]
Standard library only (with deploy/check/harness.py), so any Python 3.9+ runs it
(scripts/check-secure-clients).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "check"))
from harness import free_port, stop  # noqa: E402  (the deploy checks' helpers, standard library only)
TRUST = "spiffe://cluster.local/ns/default/sa"
CALLER = f"{TRUST}/reports"
CALLER_METHODS = ["/shopmesh.user.v1.UserService/*", "/shopmesh.catalog.v1.CatalogService/*", "/shopmesh.order.v1.OrderService/*"]
DEADLINE_SECONDS = 60


def jwks(tmp: Path) -> Path:
    """A JWKS with one P-256 public key (openssl makes the key; the JWK is its point)."""
    key = tmp / "issuer.key"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)], check=True)
    der = subprocess.run(["openssl", "ec", "-in", str(key), "-pubout", "-outform", "DER"], check=True, capture_output=True).stdout
    point = der[-64:]  # SubjectPublicKeyInfo ends with the uncompressed point 04 || x || y
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    path = tmp / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "example", "alg": "ES256", "use": "sig",
                                          "x": b64(point[:32]), "y": b64(point[32:])}]}))
    return path


def main() -> int:
    binary = os.path.abspath(sys.argv[1])
    commands, current = [], None
    for arg in sys.argv[2:]:
        if arg == "--":
            current = []
            commands.append(current)
        elif current is not None:
            current.append(arg)
    if not commands:
        sys.exit(__doc__)
    tmp = Path(tempfile.mkdtemp(prefix="shopmesh-secure-"))
    procs: list[subprocess.Popen] = []
    try:
        certs = tmp / "certs"
        subprocess.run([binary, "dev-certs", "--out", str(certs)], check=True, capture_output=True)
        caller = certs / "reports"
        subprocess.run([binary, "issue-certificate", "--ca-cert", str(certs / "ca.crt"), "--ca-key", str(certs / "ca.key"),
                        "--spiffe-id", CALLER, "--validity", "1h", "--out", str(caller)], check=True, capture_output=True)
        policy = json.loads((ROOT / "deploy" / "authz-policy.json").read_text())
        policy["rules"].append({"description": "The reports team (values: callers).", "callers": [CALLER], "methods": CALLER_METHODS})
        (tmp / "policy.json").write_text(json.dumps(policy))
        common = ["--authz-policy", str(tmp / "policy.json"), "--jwt-jwks", str(jwks(tmp)),
                  "--jwt-issuer", "https://id.example", "--jwt-audience", "shopmesh"]
        ports = {name: free_port() for name in ("user", "user2", "catalog", "payment", "order")}
        metrics = {name: free_port() for name in ports}
        probes = {name: free_port() for name in ports}
        user_urls = f"http://127.0.0.1:{ports['user']},http://127.0.0.1:{ports['user2']}"
        log = open(tmp / "mesh.log", "w")
        for name, port in ports.items():
            svc = name.rstrip("2")
            identity = certs / f"shopmesh-{svc}"
            args = [binary, "serve", svc, f"--{svc}-listen=127.0.0.1:{port}", f"--{svc}-database-url=sqlite://{tmp}/{svc}.db",
                    "--tls-cert", str(identity / "tls.crt"), "--tls-key", str(identity / "tls.key"), "--tls-ca", str(identity / "ca.crt"),
                    f"--probe-listen=127.0.0.1:{probes[name]}", f"--metrics-listen=127.0.0.1:{metrics[name]}", *common]
            if svc == "order":
                # No broker here: the order events are recorded in the outbox and dropped
                # (docs/events.md); what this run proves is the callers' side.
                args += [f"--user-url={user_urls}", f"--catalog-url=http://127.0.0.1:{ports['catalog']}",
                         f"--payment-url=http://127.0.0.1:{ports['payment']}", "--events-url=none"]
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"}))
        deadline = time.monotonic() + DEADLINE_SECONDS
        for name, probe in probes.items():
            while subprocess.run([binary, "healthcheck", f"127.0.0.1:{probe}"], capture_output=True).returncode != 0:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit(f"{name} did not become SERVING:\n" + (tmp / "mesh.log").read_text()[-3000:])
                time.sleep(0.2)
        print(f"secure mesh: 5 processes (user x2, catalog, payment, order), mTLS, policy, tokens on; caller {CALLER}")
        env = {**os.environ,
               "SHOPMESH_CA": str(caller / "ca.crt"), "SHOPMESH_CERT": str(caller / "tls.crt"), "SHOPMESH_KEY": str(caller / "tls.key"),
               "SHOPMESH_SERVER_NAME": "localhost",
               "SHOPMESH_USER_ADDRS": f"127.0.0.1:{ports['user']},127.0.0.1:{ports['user2']}",
               "SHOPMESH_CATALOG_ADDR": f"127.0.0.1:{ports['catalog']}", "SHOPMESH_ORDER_ADDR": f"127.0.0.1:{ports['order']}",
               "SHOPMESH_PAYMENT_ADDR": f"127.0.0.1:{ports['payment']}",
               "SHOPMESH_SERVICE_CONFIG": str(ROOT / "clients" / "grpc-service-config.json"),
               # grpc-go before 1.40 (Debian's 1.33) applies a service config's retryPolicy only with this.
               "GRPC_GO_RETRY": "on"}
        failed = 0
        for command in commands:
            started = time.monotonic()
            result = subprocess.run(command, env=env, timeout=300)
            took = time.monotonic() - started
            print(f"{'ok  ' if result.returncode == 0 else 'FAIL'} {' '.join(command)} ({took:.1f} s)")
            failed += result.returncode != 0
        # round_robin reached both replicas: each served GetUser (its own metrics port).
        for name in ("user", "user2"):
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics[name]}/metrics", timeout=5).read().decode()
            served = sum(float(m.group(1)) for m in re.finditer(
                r'^rpc_server_call_duration_seconds_count\{[^}]*rpc_method="GetUser"[^}]*\} (\S+)$', text, re.M))
            print(f"{'ok  ' if served else 'FAIL'} user replica {name} served {served:.0f} GetUser calls")
            failed += not served
        return 1 if failed else 0
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
