"""cert-manager, emulated: each Certificate whose Issuer is ready gets its Secret (tls.crt, tls.key,
ca.crt, type kubernetes.io/tls) written as cert-manager writes it. Issuers: `selfSigned` and `ca`
(signing with the CA Secret's key). Keys by openssl: ECDSA P-256 (cert-manager's RSA default is
honoured for `algorithm: RSA`), Ed25519. Renewal is not emulated (a Certificate is issued once)."""

from __future__ import annotations

import base64
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cluster import Cluster

Manifest = dict[str, Any]


def _openssl(*args: str, cwd: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {done.stderr.strip()}")


def _hours(duration: str | None) -> int:
    if not duration:
        return 2160
    total = 0.0
    for unit, factor in (("h", 1), ("m", 1 / 60), ("s", 1 / 3600)):
        if unit in duration:
            head, duration = duration.split(unit, 1)
            total += float(head) * factor
    return max(1, int(total))


def issue(cert: Manifest, issuer_secret: Manifest | None) -> dict[str, str]:
    """The Secret's data of `cert`, self-signed when issuer_secret is None."""
    spec = cert["spec"]
    algorithm = (spec.get("privateKey") or {}).get("algorithm", "RSA")
    with tempfile.TemporaryDirectory() as d:
        if algorithm == "Ed25519":
            _openssl("genpkey", "-algorithm", "ed25519", "-out", "key.pem", cwd=d)
        elif algorithm == "ECDSA":
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "key.pem", cwd=d)
        else:
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "key.pem", cwd=d)
        sans = [f"DNS:{n}" for n in spec.get("dnsNames", [])] + [f"URI:{u}" for u in spec.get("uris", [])]
        ext = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"] if spec.get("isCA") else \
              ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment", "extendedKeyUsage=serverAuth,clientAuth"]
        if sans:
            ext.append("subjectAltName=critical," + ",".join(sans) if not spec.get("commonName") else "subjectAltName=" + ",".join(sans))
        ext_args = [a for e in ext for a in ("-addext", e)]
        # openssl's -subj separates RDNs with "/": one in the name is escaped.
        subject = "/CN=" + spec["commonName"].replace("/", "\\/") if spec.get("commonName") else "/"
        days = str(max(1, _hours(spec.get("duration")) // 24))
        if issuer_secret is None:
            _openssl("req", "-x509", "-new", "-key", "key.pem", "-subj", subject, "-days", days, *ext_args, "-out", "crt.pem", cwd=d)
            ca = Path(d, "crt.pem").read_text()
        else:
            data = issuer_secret["data"]
            Path(d, "ca.pem").write_bytes(base64.b64decode(data["tls.crt"]))
            Path(d, "cakey.pem").write_bytes(base64.b64decode(data["tls.key"]))
            _openssl("req", "-new", "-key", "key.pem", "-subj", subject, "-out", "csr.pem", cwd=d)
            Path(d, "ext.cnf").write_text("\n".join(ext) + "\n")
            _openssl("x509", "-req", "-in", "csr.pem", "-CA", "ca.pem", "-CAkey", "cakey.pem", "-days", days, "-extfile", "ext.cnf",
                     "-set_serial", str(int.from_bytes(__import__("os").urandom(8), "big")), "-out", "crt.pem", cwd=d)
            ca = base64.b64decode(data.get("ca.crt") or data["tls.crt"]).decode()
        key = Path(d, "key.pem").read_text()
        crt = Path(d, "crt.pem").read_text()
    return {k: base64.b64encode(v.encode()).decode() for k, v in {"tls.crt": crt, "tls.key": key, "ca.crt": ca}.items()}


def reconcile(cluster: "Cluster") -> None:
    for cert in cluster.list("Certificate"):
        ns, spec = cert["metadata"]["namespace"], cert["spec"]
        if cluster.get("Secret", ns, spec["secretName"]) is not None:
            continue
        ref = spec["issuerRef"]
        issuer = cluster.get(ref.get("kind", "Issuer"), ns if ref.get("kind", "Issuer") == "Issuer" else "", ref["name"])
        if issuer is None:
            continue
        if "selfSigned" in issuer["spec"]:
            data = issue(cert, None)
        elif "ca" in issuer["spec"]:
            ca_secret = cluster.get("Secret", ns, issuer["spec"]["ca"]["secretName"])
            if ca_secret is None:
                continue
            data = issue(cert, ca_secret)
        else:
            cluster.event(f"Certificate {cert['metadata']['name']}: issuer kind {sorted(issuer['spec'])} not emulated")
            continue
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                       "metadata": {"name": spec["secretName"], "namespace": ns}, "data": data}, ns)
        cluster.event(f"cert-manager: issued Secret {spec['secretName']} for Certificate {cert['metadata']['name']}")
