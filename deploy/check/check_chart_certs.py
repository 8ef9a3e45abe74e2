"""The chart's own mesh CA, end to end, with no cluster: renders the chart with default values
(mTLS on, no cert-manager) through Helm's Go SDK, takes the CA Secret Helm made (sprig's
genPrivateKey/genCAWithKey), runs each Deployment's `issue-certificate` init container exactly as
rendered (the shopmesh binary, the mount paths mapped to a temporary directory), and checks:

- every certificate chains to the CA (openssl), names the SPIFFE ID its callers pin and the
  authorization policy names, and its key is readable by its owner only;
- a user service served with its certificate and the rendered policy answers a client holding
  an edge certificate issued from the same CA (what docs/security.md tells operators to do for
  the Ingress), refuses one whose identity the policy does not allow, and refuses a foreign CA;
- the service exports its certificate's end of validity (ShopmeshCertificateExpiresSoon reads it);
- a caller of another team admitted by values (`callers`), with a certificate issued from the
  chart's CA as docs/clients.md says, is served the methods listed; the same service account in
  another namespace, and another service account of its namespace, are refused.

Usage (scripts/check-chart-certificates): check_chart_certs.py path/to/shopmesh
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from helm_python.chart import Chart

from harness import Checks, free_port, until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shopmesh"
RELEASE, NAMESPACE, TRUST_DOMAIN = "shopmesh", "shop", "cluster.local"
CA_MOUNT, TLS_MOUNT = "/var/run/shopmesh/mesh-ca", "/etc/shopmesh/tls"
DEADLINE_SECONDS = 60


# A caller of another team, admitted for what `shopmesh bench get-user` calls.
CALLER = {"name": "reports", "namespace": "analytics", "serviceAccount": "reports",
          "methods": ["/shopmesh.user.v1.UserService/CreateUser", "/shopmesh.user.v1.UserService/GetUser"]}


def spiffe(sa: str, namespace: str = NAMESPACE) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}"


def main() -> int:
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/shopmesh")
    checks = Checks("chart certificates")
    tmp = Path(tempfile.mkdtemp(prefix="shopmesh-certs-"))
    procs: list[subprocess.Popen] = []
    state: dict = {}
    try:
        def render() -> str:
            chart = Chart.load(CHART)
            # No cluster here: a one-off render may generate the CA (the chart refuses otherwise).
            files = chart.render(values={"generateSecretsWithoutCluster": True, "callers": [CALLER]}, name=RELEASE, namespace=NAMESPACE, is_install=True)
            chart.close()
            objects = [d for p, t in files.items() if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
            (secret,) = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == f"{RELEASE}-mesh-ca"]
            assert secret["type"] == "kubernetes.io/tls", f"the CA Secret is of type {secret['type']}"
            ca = tmp / "ca"
            ca.mkdir()
            for key in ("tls.crt", "tls.key"):
                (ca / key).write_bytes(base64.b64decode(secret["data"][key]))
            (policy_cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == f"{RELEASE}-authz-policy"]
            (tmp / "policy.json").write_text(policy_cm["data"]["policy.json"])
            state["deployments"] = {o["metadata"]["name"].removeprefix(f"{RELEASE}-"): o for o in objects if o["kind"] == "Deployment"}
            state["policy"] = policy_cm["data"]["policy.json"]
            text = subprocess.run(["openssl", "x509", "-in", str(ca / "tls.crt"), "-noout", "-text"], capture_output=True, text=True, check=True).stdout
            assert "CA:TRUE" in text, "Helm's CA certificate is no CA"
            algorithm = re.search(r"Public Key Algorithm: (\S+)", text)
            return f"default values: CA Secret {secret['metadata']['name']} ({algorithm.group(1) if algorithm else '?'}), {len(state['deployments'])} Deployments"

        checks.run("render the chart: mTLS on without cert-manager", render)

        def issue_all() -> str:
            for svc, dep in sorted(state["deployments"].items()):
                pod = dep["spec"]["template"]["spec"]
                inits = [c for c in pod.get("initContainers", []) if c["name"] == "issue-certificate"]
                assert len(inits) == 1, f"{svc}: {len(inits)} issue-certificate init containers"
                out = tmp / svc
                args = [a.replace(CA_MOUNT, str(tmp / "ca")).replace(TLS_MOUNT, str(out)) for a in inits[0]["args"]]
                done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)
                assert done.returncode == 0, f"{svc}: {' '.join(args)} failed: {done.stderr.strip()}"
                verified = subprocess.run(["openssl", "verify", "-CAfile", str(tmp / "ca" / "tls.crt"), str(out / "tls.crt")], capture_output=True, text=True)
                assert verified.returncode == 0, f"{svc}: the certificate does not chain to the CA: {verified.stdout}{verified.stderr}"
                san = subprocess.run(["openssl", "x509", "-in", str(out / "tls.crt"), "-noout", "-ext", "subjectAltName"], capture_output=True, text=True, check=True).stdout
                want = spiffe(f"{RELEASE}-{svc}")
                assert f"URI:{want}" in san, f"{svc}: the certificate names {san.strip()!r}, not {want}"
                assert (out / "tls.key").stat().st_mode & 0o077 == 0, f"{svc}: the key is readable by others"
                # The identity its callers pin, and the one the policy names for order.
                for caller, dep2 in state["deployments"].items():
                    container = next(c for c in dep2["spec"]["template"]["spec"]["containers"] if c["name"] == caller)
                    env = {e["name"]: e.get("value") for e in container.get("env", [])}
                    pinned = env.get(f"SHOPMESH_{svc.upper()}_SPIFFE_ID")
                    assert pinned in (None, want), f"{caller} pins {svc} as {pinned}, but its certificate names {want}"
            assert spiffe(f"{RELEASE}-order") in state["policy"], "the policy does not name order's identity"
            return f"{', '.join(sorted(state['deployments']))}: each chains to the CA, names its ServiceAccount's SPIFFE ID, key 0600"

        checks.run("each init container's command, as rendered, issues its pod's certificate", issue_all)

        def edge_and_foreign() -> str:
            gateway = subprocess.run([binary, "issue-certificate", f"--ca-cert={tmp / 'ca' / 'tls.crt'}", f"--ca-key={tmp / 'ca' / 'tls.key'}",
                                      f"--spiffe-id={spiffe('shopmesh-gateway')}", "--validity=1h", f"--out={tmp / 'edge'}"], capture_output=True, text=True)
            assert gateway.returncode == 0, gateway.stderr
            # Not allowed by the policy to create users: the catalog's administrator.
            admin = subprocess.run([binary, "issue-certificate", f"--ca-cert={tmp / 'ca' / 'tls.crt'}", f"--ca-key={tmp / 'ca' / 'tls.key'}",
                                    f"--spiffe-id={spiffe('shopmesh-admin')}", "--validity=1h", f"--out={tmp / 'admin'}"], capture_output=True, text=True)
            assert admin.returncode == 0, admin.stderr
            # The admitted caller, and two that are not: its service account in another namespace,
            # another service account of its namespace.
            for out, sa, ns in (("caller", "reports", "analytics"), ("caller-elsewhere", "reports", "elsewhere"), ("caller-neighbour", "dashboards", "analytics")):
                done = subprocess.run([binary, "issue-certificate", f"--ca-cert={tmp / 'ca' / 'tls.crt'}", f"--ca-key={tmp / 'ca' / 'tls.key'}",
                                       f"--spiffe-id={spiffe(sa, ns)}", "--validity=1h", f"--out={tmp / out}"], capture_output=True, text=True)
                assert done.returncode == 0, done.stderr
            foreign = subprocess.run([binary, "dev-certs", f"--out={tmp / 'foreign'}", f"--namespace={NAMESPACE}"], capture_output=True, text=True)
            assert foreign.returncode == 0, foreign.stderr
            return "edge (shopmesh-gateway), shopmesh-admin and three callers from the chart's CA; shopmesh-gateway from a foreign CA"

        checks.run("issue an edge certificate from the chart's CA, as docs/security.md says", edge_and_foreign)

        ports = {"grpc": free_port(), "probe": free_port(), "metrics": free_port()}

        def serve() -> str:
            certs = tmp / "user"
            args = [binary, "serve", "user", f"--user-listen=127.0.0.1:{ports['grpc']}", f"--user-database-url=sqlite://{tmp / 'user.db'}",
                    f"--probe-listen=127.0.0.1:{ports['probe']}", f"--metrics-listen=127.0.0.1:{ports['metrics']}",
                    f"--tls-cert={certs / 'tls.crt'}", f"--tls-key={certs / 'tls.key'}", f"--tls-ca={certs / 'ca.crt'}",
                    f"--trust-domain={TRUST_DOMAIN}", f"--authz-policy={tmp / 'policy.json'}"]
            log = open(tmp / "user.log", "w")
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"}))
            deadline = time.monotonic() + DEADLINE_SECONDS
            until("user SERVING on the probe port", lambda: procs[0].poll() is None and subprocess.run(
                [binary, "healthcheck", f"127.0.0.1:{ports['probe']}", "shopmesh.user.v1.UserService"], capture_output=True).returncode == 0, deadline)
            assert procs[0].poll() is None, (tmp / "user.log").read_text()
            return f"user on 127.0.0.1:{ports['grpc']} with its chart-issued certificate and the rendered policy"

        checks.run("a user service serves on its chart-issued certificate", serve)

        def bench(identity: str) -> subprocess.CompletedProcess:
            certs = tmp / identity
            return subprocess.run([binary, "bench", "get-user", f"--user=https://127.0.0.1:{ports['grpc']}", "--requests=20", "--users=2",
                                   "--concurrency=2", "--connections=1", "--timeout=5s",
                                   f"--tls-ca={tmp / 'ca' / 'tls.crt'}", f"--tls-cert={certs / 'tls.crt'}", f"--tls-key={certs / 'tls.key'}",
                                   f"--trust-domain={TRUST_DOMAIN}"], capture_output=True, text=True, timeout=120)

        def served() -> str:
            done = bench("edge")
            assert done.returncode == 0, f"the edge's calls failed:\n{done.stdout}\n{done.stderr}"
            assert re.search(r"^\s*codes\s+OK 20\s*$", done.stdout, re.M), f"not 20 OK answers:\n{done.stdout}"
            return "shopmesh bench get-user with the edge certificate: CreateUser and 20 GetUser answered"

        checks.run("the edge's certificate is served", served)

        def refused() -> str:
            admin = bench("admin")
            assert admin.returncode != 0 and "PERMISSION_DENIED" in admin.stdout + admin.stderr, f"shopmesh-admin was not denied:\n{admin.stdout}\n{admin.stderr}"
            foreign = tmp / "foreign" / "shopmesh-gateway"
            done = subprocess.run([binary, "bench", "get-user", f"--user=https://127.0.0.1:{ports['grpc']}", "--requests=2", "--users=1", "--timeout=5s",
                                   f"--tls-ca={tmp / 'ca' / 'tls.crt'}", f"--tls-cert={foreign / 'tls.crt'}", f"--tls-key={foreign / 'tls.key'}"],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode != 0, f"a certificate of another CA was served:\n{done.stdout}"
            return "shopmesh-admin: PERMISSION_DENIED (the policy); a foreign CA's gateway: refused"

        checks.run("identities the policy does not allow, and other CAs, are refused", refused)

        def caller_admitted() -> str:
            done = bench("caller")
            assert done.returncode == 0 and re.search(r"^\s*codes\s+OK 20\s*$", done.stdout, re.M), \
                f"the admitted caller {spiffe('reports', 'analytics')} was not served:\n{done.stdout}\n{done.stderr}"
            for other in ("caller-elsewhere", "caller-neighbour"):
                denied = bench(other)
                assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stdout + denied.stderr, f"{other} was not denied:\n{denied.stdout}\n{denied.stderr}"
            return "reports (analytics): 20 GetUser answered; reports in another namespace and dashboards (analytics): PERMISSION_DENIED"

        checks.run("a caller admitted by values is served; its service account elsewhere and its neighbours are refused", caller_admitted)

        def gauge() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            line = next((l for l in text.splitlines() if l.startswith("shopmesh_tls_certificate_expiry_timestamp_seconds{")), None)
            assert line, "no shopmesh_tls_certificate_expiry_timestamp_seconds series"
            assert f'identity="{spiffe(f"{RELEASE}-user")}"' in line, line
            left = float(line.rsplit(" ", 1)[1]) - time.time()
            # tls.chartCA.duration, 8760 h by default.
            assert abs(left - 8760 * 3600) < 600, f"the certificate has {left / 86400:.1f} days left, not 365"
            return f"{left / 86400:.1f} days left"

        checks.run("the service exports its certificate's end of validity", gauge)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if checks.failed:
            log = tmp / "user.log"
            if log.exists():
                print("--- user.log (tail)\n" + "\n".join(log.read_text().splitlines()[-30:]))
        shutil.rmtree(tmp, ignore_errors=True)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
