"""Checks of helm/shopmesh with no cluster: Helm's lint, rendering by Helm's own Go SDK
(helm-python-sdk), strict validation of every rendered object against Kubernetes' schemas
(kubernetes-validate), and tests of what the chart is meant to guarantee.

Run by scripts/check-deploy, which makes the virtual environment this needs.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from helm_python.chart import Chart, lint, values_from_yaml
from helm_python.errors import HelmError

import check_callers
import check_events as events
import kubelet_files
from harness import Checks

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shopmesh"
RELEASE, NAMESPACE = "shopmesh", "shop"

# The services: gRPC port and the gRPC service (= readiness health name).
SERVICES = {
    "user": (50051, "shopmesh.user.v1.UserService"),
    "order": (50052, "shopmesh.order.v1.OrderService"),
    "payment": (50053, "shopmesh.payment.v1.PaymentService"),
    "catalog": (50054, "shopmesh.catalog.v1.CatalogService"),
    "inventory": (50055, "shopmesh.inventory.v1.InventoryService"),
    "notification": (50056, "shopmesh.notification.v1.NotificationService"),
}
# Who calls whom (the chart's default services.<name>.calls).
CALLS = {"order": ["user", "payment", "catalog"], "inventory": ["catalog"]}
# Kinds from CRDs: kubernetes-validate has Kubernetes' own schemas only; these are validated
# against the CRD schemas committed in deploy/check/crds (validate.mjs, node). Any other kind
# without a schema fails the validation.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("postgresql.cnpg.io/v1", "Cluster"),
    ("postgresql.cnpg.io/v1", "Database"),
}
CRD_DIR = Path(__file__).resolve().parent / "crds"
DOMAIN = "cluster.local."
# The grace period must cover drain + shutdown + this (telemetry flush ~2 s, exit 1 s).
GRACE_MARGIN_SECONDS = 3

Manifest = dict[str, Any]
# These renders have no cluster (lookup finds nothing), where the chart refuses to generate its CA
# and passwords unless told this is a one-off render. Added to every rendering's values unless it
# says otherwise (the GitOps renderings set existing Secrets instead).
ONE_OFF = {"generateSecretsWithoutCluster": True}


# The version issue 16 names as the platform teams' target, validated besides both ends.
TARGET_KUBE_VERSION = "1.33"


def kube_versions(chart_dir: Path) -> list[str]:
    """The oldest version Chart.yaml accepts, the platform teams' target and the newest kubernetes-validate knows."""
    constraint = yaml.safe_load((chart_dir / "Chart.yaml").read_text())["kubeVersion"]
    oldest = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", constraint)
    assert oldest, f"kubeVersion {constraint!r} is not of the form >=X.Y.Z-0"
    newest = kubernetes_validate.utils.latest_version()
    return sorted({oldest.group(1), TARGET_KUBE_VERSION, ".".join(newest.split(".")[:2])}, key=lambda v: tuple(map(int, v.split("."))))


def merged(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


class Rendered:
    """The objects of one rendering (NOTES.txt aside), looked up by kind and name."""

    def __init__(self, chart: Chart, values: dict) -> None:
        self.values = values
        self.chart, self.input = chart, values
        files = chart.render(values=merged(ONE_OFF, values), name=RELEASE, namespace=NAMESPACE, is_install=True)
        self.notes = files.pop(f"{chart.name}/templates/NOTES.txt", "")
        self.objects: list[tuple[str, Manifest]] = [
            (path, doc) for path, text in sorted(files.items()) for doc in yaml.safe_load_all(text) if doc
        ]

    def kind(self, kind: str) -> list[Manifest]:
        return [o for _, o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> Manifest:
        found = [o for o in self.kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
        return found[0]


def name(svc: str) -> str:
    return f"{RELEASE}-{svc}"


def headless(svc: str) -> str:
    return f"{RELEASE}-{svc}-headless"


def fqdn(service: str) -> str:
    return f"{service}.{NAMESPACE}.svc.{DOMAIN}"


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)s", duration)
    assert m, f"duration {duration!r} is not whole seconds"
    return int(m.group(1))


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def cloudnativepg(values: dict) -> bool:
    """The chart's PostgreSQL is a CloudNativePG Cluster (postgresql.mode)."""
    return values["postgresql"]["enabled"] and values["postgresql"].get("mode") == "cloudnative-pg"


def statefulset_pg(values: dict) -> bool:
    """The chart's PostgreSQL is its own single-instance StatefulSet."""
    return values["postgresql"]["enabled"] and not cloudnativepg(values)


def role_secret(values: dict, svc: str) -> str:
    """CloudNativePG: the basic-auth Secret with svc's role password."""
    return f"{values['postgresql']['existingSecret'] or RELEASE + '-postgresql'}-{svc}"


def password_secret(values: dict) -> str:
    """The Secret with the bundled PostgreSQL's passwords."""
    return values["postgresql"]["existingSecret"] or f"{RELEASE}-postgresql"


def check_database_env(values: dict, container: Manifest, svc: str, secret: str) -> str:
    """svc's database URL in container: an external database's from database.existingSecret;
    the bundled PostgreSQL's composed by the kubelet from the role's password in `secret`, so no
    render ever holds a URL with a password (nor a password of its own making)."""
    env = container.get("env", [])
    names = [e["name"] for e in env]
    var = f"SHOPMESH_{svc.upper()}_DATABASE_URL"
    assert var in names, f"{container['name']}: no {var}"
    url = env[names.index(var)]
    if not values["postgresql"]["enabled"]:
        ref = url.get("valueFrom", {}).get("secretKeyRef", {})
        assert ref == {"name": values["database"]["existingSecret"], "key": f"{svc}-database-url"}, f"{container['name']}: {var} is {url}, not its own key of database.existingSecret"
        # Replicas of an external database: a key of their own, optional (absent: no replicas).
        read = f"SHOPMESH_{svc.upper()}_DATABASE_READ_URL"
        assert read in names, f"{container['name']}: no {read}"
        read_ref = env[names.index(read)].get("valueFrom", {}).get("secretKeyRef", {})
        want_read = {"name": values["database"]["existingSecret"], "key": f"{svc}-database-read-url", "optional": True}
        assert read_ref == want_read, f"{container['name']}: {read} is {read_ref}, not {want_read}"
        return "database.existingSecret (read URL from its optional key)"
    if cloudnativepg(values):
        for var, host in ((var, f"{RELEASE}-postgresql-rw"), (f"SHOPMESH_{svc.upper()}_DATABASE_READ_URL", f"{RELEASE}-postgresql-ro")):
            assert var in names, f"{container['name']}: no {var}"
            want = f"postgres://shopmesh_{svc}:$(DATABASE_PASSWORD)@{fqdn(host)}:5432/shopmesh_{svc}"
            got = env[names.index(var)]
            assert got.get("value") == want, f"{container['name']}: {var} is {got}, not {want!r}"
            assert "DATABASE_PASSWORD" in names[:names.index(var)], f"{container['name']}: DATABASE_PASSWORD is not defined before {var}"
        ref = env[names.index("DATABASE_PASSWORD")].get("valueFrom", {}).get("secretKeyRef", {})
        want_ref = {"name": role_secret(values, svc), "key": "password"}
        assert ref == want_ref, f"{container['name']}: the password comes from {ref}, not {want_ref}"
        return f"-rw and -ro composed from {want_ref['name']}/password"
    want = f"postgres://shopmesh_{svc}:$(DATABASE_PASSWORD)@{fqdn(RELEASE + '-postgresql')}:5432/shopmesh_{svc}"
    assert url.get("value") == want, f"{container['name']}: {var} is {url}, not {want!r} (composed from the role's password)"
    # The kubelet expands $(X) only from variables defined before.
    assert "DATABASE_PASSWORD" in names[:names.index(var)], f"{container['name']}: DATABASE_PASSWORD is not defined before {var}"
    ref = env[names.index("DATABASE_PASSWORD")].get("valueFrom", {}).get("secretKeyRef", {})
    assert ref == {"name": secret, "key": f"{svc}-password"}, f"{container['name']}: the password comes from {ref}, not {secret}/{svc}-password"
    return f"composed from {secret}/{svc}-password"


def settings(r: "Rendered", svc: str) -> dict:
    return merged(r.values["defaults"], r.values["services"].get(svc, {}))


def services_of(r: "Rendered") -> list[str]:
    """The enabled services of a rendering."""
    return sorted(s for s, v in r.values["services"].items() if v.get("enabled", True) is not False)


def tls_on(values: dict) -> bool:
    # `auto`, the old default, means on.
    return values["tls"]["enabled"] in (True, "auto")


def cert_manager_on(values: dict) -> bool:
    # Rendered offline: `auto` finds no cert-manager.io/v1 and means the chart's own CA.
    return tls_on(values) and values["tls"]["certManager"]["enabled"] is True


def chart_issued(values: dict, svc: str) -> bool:
    """Whether svc's pods sign their own certificate with the chart's CA (init container)."""
    return tls_on(values) and not cert_manager_on(values) and not values["tls"]["secretNames"].get(svc)


def edge_secret(values: dict) -> str:
    return values["tls"]["secretNames"].get("edge") or f"{RELEASE}-edge-tls"


def authz_on(values: dict) -> bool:
    return values["authz"]["enabled"] is True or (values["authz"]["enabled"] == "auto" and tls_on(values))


def container_of(r: "Rendered", svc: str) -> Manifest:
    (c,) = [c for c in r.one("Deployment", name(svc))["spec"]["template"]["spec"]["containers"] if c["name"] == svc]
    return c


def rendered_policy(values: dict, namespace: str = NAMESPACE) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """The chart's authz.policy with its templates filled in, as (callers, methods) pairs."""
    td = values["tls"]["trustDomain"]
    out = []
    for rule in values["authz"]["policy"]["rules"]:
        callers = tuple(
            re.sub(r"\{\{ include \\?\"shopmesh\.fullname\\?\" \. \}\}", RELEASE, c)
            .replace("{{ .Values.tls.trustDomain }}", td).replace("{{ .Release.Namespace }}", namespace)
            for c in rule["callers"]
        )
        out.append((callers, tuple(rule["methods"])))
    return out


def public_methods(values: dict, services: list[str]) -> dict[str, list[str]]:
    """What the policy lets the edge identity call, per service: the services the edge may reach."""
    edge = f"spiffe://{values['tls']['trustDomain']}/ns/{NAMESPACE}/sa/{values['edge']['identity']}"
    out: dict[str, list[str]] = {}
    for callers, methods in rendered_policy(values):
        if edge in callers:
            for m in methods:
                svc = next((s for s in services if m.startswith(f"/{SERVICES[s][1]}/")), None)
                if svc and m not in out.setdefault(svc, []):
                    out[svc].append(m)
    return out


# ---------------------------------------------------------------------------------------------
# Intent: what every rendering must guarantee, for each service.


def check_hardened(pod: Manifest, what: str) -> None:
    psc = pod.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, f"{what}: pod securityContext.runAsNonRoot is not true"
    assert psc.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"), f"{what}: pod seccompProfile is not RuntimeDefault or Localhost"
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, f"{what}/{c['name']}: allowPrivilegeEscalation is not false"
        assert sc.get("readOnlyRootFilesystem") is True, f"{what}/{c['name']}: readOnlyRootFilesystem is not true"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{what}/{c['name']}: capabilities do not drop ALL"
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{what}/{c['name']}: may run as root"
        assert "privileged" not in sc or sc["privileged"] is False, f"{what}/{c['name']}: privileged"


def check_service(r: Rendered, svc: str) -> str:
    port, grpc_name = SERVICES[svc]
    cfg = settings(r, svc)
    deploy = r.one("Deployment", name(svc))
    pod = deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selects(selector, labels), f"{svc}: the Deployment's selector does not match its pods"
    container = container_of(r, svc)
    assert container["args"] == ["serve", svc], f"{svc}: container args are {container['args']}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.get("grpc") == port, f"{svc}: grpc containerPort is {ports.get('grpc')}, not {port}"
    env = env_of(container)
    assert env.get(f"SHOPMESH_{svc.upper()}_LISTEN") == f"0.0.0.0:{port}", f"{svc}: listen address does not match port {port}"
    assert env.get("SHOPMESH_METRICS_LISTEN") == f"0.0.0.0:{ports.get('metrics')}", f"{svc}: metrics listen address does not match the metrics port"
    # External database: the hook Job migrates before the pods start. Bundled: there is no
    # database before install, so the pods migrate (the pre-upgrade Job too, on upgrades).
    want_migrate = "true" if r.values["postgresql"]["enabled"] else "false"
    assert env.get("SHOPMESH_DB_MIGRATE") == want_migrate, f"{svc}: SHOPMESH_DB_MIGRATE is {env.get('SHOPMESH_DB_MIGRATE')!r}, not {want_migrate!r}"
    check_database_env(r.values, container, svc, password_secret(r.values))
    others = [k for k in env if k.endswith("_DATABASE_URL") and k != f"SHOPMESH_{svc.upper()}_DATABASE_URL"]
    assert not others, f"{svc}: the pod sees other services' database URLs: {others}"

    # Probes: native gRPC on the service's port (on the plaintext probe port when the gRPC port
    # requires mTLS, which the kubelet cannot speak); liveness/startup ask "liveness", readiness
    # its own name.
    probe_port = r.values["tls"]["probePort"] if tls_on(r.values) else port
    for probe, health in (("startupProbe", "liveness"), ("livenessProbe", "liveness"), ("readinessProbe", grpc_name)):
        grpc = container.get(probe, {}).get("grpc")
        assert grpc, f"{svc}: no gRPC {probe}"
        assert grpc.get("port") == probe_port, f"{svc}: {probe} asks port {grpc.get('port')}, not {probe_port}"
        assert grpc.get("service") == health, f"{svc}: {probe} asks health name {grpc.get('service')!r}, not {health!r}"

    check_hardened(pod, f"{svc} Deployment")
    assert pod.get("serviceAccountName") == name(svc), f"{svc}: does not run as its own ServiceAccount"
    res = container.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resource in res.get(part, {}), f"{svc}: no {resource} {part}"
    if cfg.get("topologySpreadConstraints") is None:
        keys = {t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])}
        assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys, f"{svc}: not spread over zones and nodes: {keys}"
        for t in pod["topologySpreadConstraints"]:
            assert selects(t["labelSelector"]["matchLabels"], labels), f"{svc}: a topology spread constraint selects other pods"
    else:
        assert pod.get("topologySpreadConstraints", []) == cfg["topologySpreadConstraints"], f"{svc}: topologySpreadConstraints not the values' override"

    grace = pod.get("terminationGracePeriodSeconds")
    drain, shutdown = seconds(env["SHOPMESH_DRAIN_DELAY"]), seconds(env["SHOPMESH_SHUTDOWN_TIMEOUT"])
    assert grace is not None and grace >= drain + shutdown + GRACE_MARGIN_SECONDS, (
        f"{svc}: terminationGracePeriodSeconds {grace} < drain {drain} + shutdown {shutdown} + {GRACE_MARGIN_SECONDS}"
    )

    # Headless Service for client-side balancing, selecting exactly these pods.
    service = r.one("Service", headless(svc))
    assert service["spec"].get("clusterIP") == "None", f"{svc}: Service {headless(svc)} is not headless"
    assert service["spec"]["selector"] == selector, f"{svc}: the headless Service selects other pods than the Deployment"
    sports = {p["name"]: p for p in service["spec"]["ports"]}
    assert sports.get("grpc", {}).get("port") == port and sports["grpc"].get("appProtocol") == "grpc", f"{svc}: headless Service has no grpc port {port} with appProtocol grpc"
    assert "metrics" in sports, f"{svc}: headless Service has no metrics port"
    assert not [s for s in r.kind("Service") if s["spec"].get("selector") == selector and s["spec"].get("clusterIP") != "None"], (
        f"{svc}: a ClusterIP Service selects its pods (it would pin gRPC connections to one pod)"
    )

    sa = r.one("ServiceAccount", name(svc))
    assert sa.get("automountServiceAccountToken") is False, f"{svc}: the ServiceAccount mounts its token"

    pdbs = [p for p in r.kind("PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], labels)]
    assert len(pdbs) == 1, f"{svc}: {len(pdbs)} PodDisruptionBudgets select its pods"
    assert pdbs[0]["spec"]["selector"]["matchLabels"] == selector, f"{svc}: the PDB's selector is not the Deployment's"
    return f"{grace}s grace >= {drain}s + {shutdown}s + {GRACE_MARGIN_SECONDS}s"


def check_autoscaler(r: Rendered) -> str:
    """Exactly one autoscaler per Deployment: the chart's HPA, a KEDA ScaledObject, or none."""
    states = []
    for svc in services_of(r):
        as_ = settings(r, svc)["autoscaling"]
        deploy = r.one("Deployment", name(svc))
        hpas = [h for h in r.kind("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name(svc)]
        scaled = [o for o in r.kind("ScaledObject") if o["spec"]["scaleTargetRef"]["name"] == name(svc)]
        if not as_["enabled"]:
            assert not hpas and not scaled, f"{svc}: an autoscaler with autoscaling.enabled false"
            assert deploy["spec"].get("replicas") == as_["minReplicas"] >= 2, f"{svc}: no autoscaler, replicas {deploy['spec'].get('replicas')}"
            states.append(f"{svc} fixed {as_['minReplicas']}")
            continue
        assert "replicas" not in deploy["spec"], f"{svc}: the Deployment sets replicas, which the autoscaler owns"
        if as_["keda"]["enabled"]:
            assert not hpas, f"{svc}: KEDA on, and the chart renders an HPA too (two HPAs on one Deployment)"
            assert len(scaled) == 1, f"{svc}: {len(scaled)} ScaledObjects"
            so = scaled[0]["spec"]
            assert so["minReplicaCount"] >= 2 and so["maxReplicaCount"] >= so["minReplicaCount"], f"{svc}: ScaledObject replicas {so['minReplicaCount']}..{so['maxReplicaCount']}"
            (prom,) = [t for t in so["triggers"] if t["type"] == "prometheus"]
            query = prom["metadata"]["query"]
            # The service's own API only: an exact rpc_service leaves health and reflection out.
            assert f'rpc_service="{SERVICES[svc][1]}"' in query, f"{svc}: KEDA query {query!r} does not select the service's own calls"
            metric = "rpc_server_active_requests" if as_["keda"]["metric"] == "inflight" else "rpc_server_call_duration_seconds_count"
            assert metric in query, f"{svc}: KEDA query {query!r} is not on {metric}"
            assert prom.get("metricType") == "AverageValue", f"{svc}: KEDA's prometheus trigger is not per pod"
            assert so.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior"), f"{svc}: KEDA's HPA has no behaviour"
            states.append(f"{svc} KEDA")
            continue
        assert not scaled, f"{svc}: a ScaledObject with KEDA off"
        assert len(hpas) == 1, f"{svc}: {len(hpas)} HPAs target Deployment {name(svc)}"
        hpa = hpas[0]
        assert hpa["apiVersion"] == "autoscaling/v2", f"{svc}: HPA is {hpa['apiVersion']}"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment", f"{svc}: HPA does not target a Deployment"
        assert hpa["spec"].get("minReplicas", 1) >= 2, f"{svc}: HPA minReplicas {hpa['spec'].get('minReplicas', 1)} < 2"
        assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"], f"{svc}: HPA maxReplicas below minReplicas"
        metrics = hpa["spec"].get("metrics", [])
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics), f"{svc}: HPA does not scale on CPU"
        behavior = hpa["spec"].get("behavior", {})
        assert behavior.get("scaleUp") and behavior.get("scaleDown"), f"{svc}: HPA has no scale-up and scale-down behaviour"
        states.append(f"{svc} HPA")
    return ", ".join(states)


def check_upstreams(r: Rendered) -> str:
    """Callers get absolute headless names (trailing dot: no search-domain walk) of their callees only."""
    done = []
    for svc in services_of(r):
        env = env_of(container_of(r, svc))
        callees = [c for c in settings(r, svc).get("calls", []) if c in services_of(r)]
        # SHOPMESH_EVENTS_URL is the broker, not a callee.
        urls = {k for k in env if re.fullmatch(r"SHOPMESH_[A-Z]+_URL", k) and k != "SHOPMESH_EVENTS_URL"}
        assert urls == {f"SHOPMESH_{c.upper()}_URL" for c in callees}, f"{svc}: URLs {sorted(urls)} for callees {callees}"
        for callee in callees:
            want = f"http://{fqdn(headless(callee))}:{SERVICES[callee][0]}"
            got = env.get(f"SHOPMESH_{callee.upper()}_URL")
            assert got == want, f"{svc}: SHOPMESH_{callee.upper()}_URL is {got!r}, not the absolute headless name {want!r}"
            r.one("Service", headless(callee))
            # With mTLS the caller pins the callee's own identity, not any workload of the mesh.
            pin = env.get(f"SHOPMESH_{callee.upper()}_SPIFFE_ID")
            want_pin = f"spiffe://{r.values['tls']['trustDomain']}/ns/{NAMESPACE}/sa/{name(callee)}" if tls_on(r.values) else None
            assert pin == want_pin, f"{svc}: SHOPMESH_{callee.upper()}_SPIFFE_ID is {pin!r}, not {want_pin!r}"
            done.append(f"{svc}->{callee}")
    for svc in services_of(r):
        # The binary refuses to serve its pod IP unauthenticated unless told: told exactly when
        # neither mTLS nor tokens required of every caller protect it.
        s = settings(r, svc)
        protected = tls_on(r.values) or (bool(r.values["jwt"].get("jwks")) and s.get("jwtRequire") == "unidentified")
        allow = env_of(container_of(r, svc)).get("SHOPMESH_ALLOW_INSECURE")
        assert allow == (None if protected else "true"), f"{svc}: SHOPMESH_ALLOW_INSECURE is {allow!r} (protected: {protected})"
    return ", ".join(done) + f" (*.svc.{DOMAIN})"


def check_migration(r: Rendered) -> str:
    if cloudnativepg(r.values):
        # Hooks run before the Cluster exists; the operator makes the databases; the pods migrate.
        jobs = [j for j in r.kind("Job") if j["metadata"]["name"] == f"{RELEASE}-migrate"]
        assert not jobs, "a migration Job with CloudNativePG (it would wait for a Cluster made after it)"
        for s in services_of(r):
            env = env_of(container_of(r, s))
            assert env.get("SHOPMESH_DB_MIGRATE") == "true", f"{s}: CloudNativePG, and the pods do not migrate"
        return "CloudNativePG: no Job, each service's pods migrate their database"
    job = r.one("Job", f"{RELEASE}-migrate")
    ann = job["metadata"].get("annotations", {})
    bundled = r.values["postgresql"]["enabled"]
    # Bundled: no database exists before install (hooks run first), so the Job runs pre-upgrade
    # only; external: before install and upgrade.
    want_hooks = {"pre-upgrade"} if bundled else {"pre-install", "pre-upgrade"}
    assert set(ann.get("helm.sh/hook", "").split(",")) == want_hooks, f"migrate Job hook is {ann.get('helm.sh/hook')!r}, not {sorted(want_hooks)}"
    assert "before-hook-creation" in ann.get("helm.sh/hook-delete-policy", ""), "migrate Job is not replaced on the next run"
    spec = job["spec"]
    assert spec.get("activeDeadlineSeconds") and spec.get("backoffLimit", 6) <= 2, f"migrate Job is not bounded: {spec.get('activeDeadlineSeconds')}, backoffLimit {spec.get('backoffLimit')}"
    pod = spec["template"]["spec"]
    check_hardened(pod, "migrate Job")
    assert pod.get("automountServiceAccountToken") is False, "migrate Job mounts a ServiceAccount token"
    args = sorted(tuple(c["args"]) for c in pod["containers"])
    assert args == sorted(("migrate", s) for s in services_of(r)), f"migrate Job runs {args}"
    # The wait: bounded, logged, before the migrations.
    # (Native sidecars, the values' extra containers, may come before it.)
    (wait,) = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") != "Always"]
    wenv = env_of(wait)
    assert wenv.get("WAIT_SECONDS") == str(r.values["database"]["waitTimeoutSeconds"]), f"the wait is not bounded by database.waitTimeoutSeconds: {wenv.get('WAIT_SECONDS')}"
    assert int(wenv["WAIT_SECONDS"]) < spec["activeDeadlineSeconds"], "the Job's deadline is shorter than its wait"
    script_cm = r.one("ConfigMap", f"{RELEASE}-migrate-scripts")
    script = script_cm["data"]["provision.sh"]
    assert "waiting for PostgreSQL at" in script and "gave up" in script and "deadline" in script, "the wait script does not log what it waits for or give up"
    assert set(script_cm["metadata"]["annotations"]["helm.sh/hook"].split(",")) == want_hooks, "the wait script is not a hook of the same events"
    assert wenv.get("SERVICES", "").split() == services_of(r), f"the wait covers {wenv.get('SERVICES')}"
    existing = r.values["database"]["existingSecret"] or r.values["postgresql"]["existingSecret"]
    copy = f"{RELEASE}-migrate"
    for c in pod["containers"]:
        svc = c["args"][1]
        if existing:
            check_database_env(r.values, c, svc, existing)
        else:
            # The release's Secret is updated after pre-upgrade hooks: the Job reads a hook copy
            # of the generated passwords, of the same events, created before it.
            check_database_env(r.values, c, svc, copy)
            secret = r.one("Secret", copy)
            sann = secret["metadata"].get("annotations", {})
            assert set(sann.get("helm.sh/hook", "").split(",")) >= want_hooks, f"migrate/{svc} reads Secret {copy}, which is not a hook of {sorted(want_hooks)}"
            assert int(sann.get("helm.sh/hook-weight", 0)) < int(ann.get("helm.sh/hook-weight", 0)), f"Secret {copy} is not created before the migrate Job (hook weight)"
            release_secret = r.one("Secret", f"{RELEASE}-postgresql")
            assert secret["data"][f"{svc}-password"] == release_secret["data"][f"{svc}-password"], f"migrate/{svc}: the hook's password differs from the pods'"
    if bundled:
        assert wenv.get("PROVISION") == "true" and isinstance(wenv.get("PGPASSWORD"), dict), "the pre-upgrade Job does not create the databases of new services"
    return f"{','.join(sorted(want_hooks))}, wait <= {wenv['WAIT_SECONDS']}s logged, " + ("existing Secret" if existing else "hook Secret created first")


def check_test_pod(r: Rendered) -> str:
    pods = [p for p in r.kind("Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(pods) == 1, f"{len(pods)} helm test pods"
    pod = pods[0]["spec"]
    check_hardened(pod, "helm test pod")
    assert pod.get("restartPolicy") == "Never", "helm test pod restarts"
    got = sorted(c["args"] for c in pod["containers"])
    tls = r.values["tls"]
    want = sorted(
        ["healthcheck", f"{fqdn(headless(s))}:{tls['probePort'] if tls_on(r.values) else SERVICES[s][0]}", SERVICES[s][1]]
        for s in services_of(r)
    )
    assert got == want, f"helm test pod runs {got}, expected {want}"
    return "shopmesh healthcheck per service"


def check_secret(r: Rendered) -> str:
    """The database credentials: your Secret's, or passwords generated once; never a URL with a
    password in a rendered object."""
    import base64
    made = [x["metadata"]["name"] for x in r.kind("Secret") if x["metadata"]["name"] != f"{RELEASE}-mesh-ca"]
    url_keys = [k for x in r.kind("Secret") for k in x.get("data", {}) if k.endswith("-database-url")]
    assert not url_keys, f"a rendered Secret holds database URLs ({url_keys}): they would carry passwords of the render's making"
    existing = r.values["database"]["existingSecret"] or r.values["postgresql"]["existingSecret"]
    if cloudnativepg(r.values):
        roles = {s: role_secret(r.values, s) for s in services_of(r)}
        if existing:
            assert not set(roles.values()) & set(made), f"the chart creates role Secrets although {existing}-<service> hold them"
            return f"CloudNativePG: your basic-auth Secrets {existing}-<service>, none created"
        seen = set()
        for s, secret_name in roles.items():
            secret = r.one("Secret", secret_name)
            assert secret["type"] == "kubernetes.io/basic-auth", f"{secret_name}: type {secret['type']}, CloudNativePG's managed roles need basic-auth"
            assert base64.b64decode(secret["data"]["username"]).decode() == f"shopmesh_{s}", f"{secret_name}: username"
            pw = base64.b64decode(secret["data"]["password"]).decode()
            assert len(pw) >= 24 and re.fullmatch(r"[A-Za-z0-9]+", pw), f"{s}: a weak or URL-unsafe password"
            assert secret["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep", f"{secret_name} is deleted on uninstall"
            seen.add(pw)
        assert len(seen) == len(roles), "services share a password"
        return f"CloudNativePG: a basic-auth Secret per role, generated once, kept"
    if existing:
        generated = [m for m in made if m == f"{RELEASE}-postgresql" or m == f"{RELEASE}-migrate"]
        assert not generated, f"the chart creates password Secrets although {existing} holds them: {generated}"
        return f"existing Secret {existing}, none created"
    passwords = r.one("Secret", f"{RELEASE}-postgresql")["data"]
    seen = set()
    for s in services_of(r):
        pw = base64.b64decode(passwords[f"{s}-password"]).decode()
        assert len(pw) >= 24 and pw != f"shopmesh_{s}", f"{s}: a weak or fixed password"
        assert re.fullmatch(r"[A-Za-z0-9]+", pw), f"{s}: a password that is not URL-safe"
        seen.add(pw)
    assert len(seen) == len(services_of(r)), "services share a password"
    return f"Secret {RELEASE}-postgresql: generated passwords, one role per service; URLs composed in the pods"


def check_cloudnativepg(r: Rendered) -> str:
    """postgresql.mode=cloudnative-pg: a Cluster with the values' instances and synchronous
    replicas, a managed role per service (its password from the Secret its pods read), a
    Database per service owned by its role; no StatefulSet."""
    pg = r.values["postgresql"]
    cnpg = pg["cloudnativepg"]
    assert not r.kind("StatefulSet"), "a StatefulSet beside the CloudNativePG Cluster"
    cluster = r.one("Cluster", f"{RELEASE}-postgresql")["spec"]
    assert cluster["instances"] == cnpg["instances"], f"instances {cluster['instances']}"
    sync = cluster.get("postgresql", {}).get("synchronous")
    if cnpg["synchronous"]["number"] > 0:
        assert sync == cnpg["synchronous"], f"synchronous replication {sync}, not the values' {cnpg['synchronous']}"
        assert sync["number"] < cluster["instances"], "more synchronous replicas than replicas: every write would wait forever"
    else:
        assert sync is None, "synchronous replication with number 0"
    assert cluster["storage"]["size"] == cnpg["storage"]["size"], "storage size"
    roles = {x["name"]: x for x in cluster["managed"]["roles"]}
    dbs = {d["spec"]["name"]: d["spec"] for d in r.kind("Database")}
    for s in services_of(r):
        role = roles.get(f"shopmesh_{s}")
        assert role and role["login"] and role["ensure"] == "present", f"no login role for {s}"
        assert role["passwordSecret"]["name"] == role_secret(r.values, s), f"{s}: the role's password is not in the Secret its pods read"
        db = dbs.get(f"shopmesh_{s}")
        assert db and db["owner"] == f"shopmesh_{s}" and db["cluster"]["name"] == f"{RELEASE}-postgresql", f"{s}: no database owned by its role"
    assert len(roles) == len(dbs) == len(services_of(r)), f"{len(roles)} roles and {len(dbs)} databases for {len(services_of(r))} services"
    assert bool(cluster.get("monitoring", {}).get("enablePodMonitor")) == cnpg["podMonitor"], "PodMonitor not as the values say"
    assert cluster.get("backup", {}) == cnpg["backup"], "backup not as the values say"
    for k in ("nodeSelector", "tolerations"):
        assert cluster.get("affinity", {}).get(k) == (pg.get(k) or None), f"the instances' {k} is not the values'"
    return f"Cluster of {cluster['instances']}, synchronous {sync or 'off'}, {len(dbs)} databases and roles"


def check_postgresql(r: Rendered) -> str:
    if cloudnativepg(r.values):
        return check_cloudnativepg(r)
    assert not r.kind("Cluster"), "a CloudNativePG Cluster although postgresql.mode is not cloudnative-pg"
    sts = [s for s in r.kind("StatefulSet") if s["metadata"]["name"] == f"{RELEASE}-postgresql"]
    if not r.values["postgresql"]["enabled"]:
        assert not sts and not [s for s in r.kind("Service") if s["metadata"]["name"] == f"{RELEASE}-postgresql"], "PostgreSQL rendered with postgresql.enabled false"
        return "off: none rendered"
    (ss,) = sts
    assert ss["spec"]["replicas"] == 1, "PostgreSQL is not a single instance"
    pod = ss["spec"]["template"]["spec"]
    check_hardened(pod, "PostgreSQL")
    assert pod.get("automountServiceAccountToken") is False, "PostgreSQL mounts a ServiceAccount token"
    assert pod["securityContext"].get("fsGroup") == pod["securityContext"].get("runAsUser"), "the data volume is not writable by the postgres user"
    (c,) = pod["containers"]
    registry = (r.values.get("global") or {}).get("imageRegistry")
    repo = r.values["postgresql"]["image"]["repository"]
    assert c["image"].startswith((f"{registry}/{repo}" if registry else repo) + ":"), f"image {c['image']}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in c, f"PostgreSQL has no {probe}"
    assert "pg_isready" in c["readinessProbe"]["exec"]["command"], "readiness is not pg_isready"
    env = env_of(c)
    assert env["POSTGRES_PASSWORD"]["secretKeyRef"]["key"] == "postgres-password", "the superuser password is not from the Secret"
    assert env.get("PGDATA", "").startswith("/var/lib/postgresql/data/"), f"PGDATA {env.get('PGDATA')} is not below the volume's mount"
    for s in services_of(r):
        assert env[f"SHOPMESH_{s.upper()}_PASSWORD"]["secretKeyRef"]["key"] == f"{s}-password", f"no password for {s}'s role"
    assert env.get("SERVICES", "").split() == services_of(r), f"PostgreSQL creates databases for {env.get('SERVICES')}"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    (claim,) = ss["spec"]["volumeClaimTemplates"]
    assert mounts.get("/var/lib/postgresql/data") == claim["metadata"]["name"], "the data directory is not on the PVC"
    assert claim["spec"]["resources"]["requests"]["storage"] == r.values["postgresql"]["persistence"]["size"], "PVC size"
    init = {v["name"]: v for v in pod["volumes"]}[mounts["/docker-entrypoint-initdb.d"]]
    cm = r.one("ConfigMap", init["configMap"]["name"])
    assert "CREATE DATABASE" in cm["data"]["provision.sh"] and init["configMap"].get("defaultMode") == 0o555, "the init script does not create the databases or is not executable"
    service = r.one("Service", f"{RELEASE}-postgresql")
    assert selects(service["spec"]["selector"], ss["spec"]["template"]["metadata"]["labels"]), "the PostgreSQL Service does not select its pod"
    assert env["POSTGRES_PASSWORD"]["secretKeyRef"]["name"] == password_secret(r.values), "the superuser password is not from the passwords' Secret"
    if not r.values["postgresql"]["existingSecret"]:
        secret = r.one("Secret", f"{RELEASE}-postgresql")
        assert secret["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep", "the passwords are deleted on uninstall (the PVC stays)"
    return f"StatefulSet, PVC {claim['spec']['resources']['requests']['storage']}, {len(services_of(r))} databases and roles"


def check_otel(r: Rendered) -> str:
    endpoint = r.values.get("otel", {}).get("endpoint")
    for svc in services_of(r):
        env = env_of(container_of(r, svc))
        otel = {k: v for k, v in env.items() if k.startswith("OTEL_")}
        if not endpoint:
            assert not otel, f"{svc}: OTEL variables set with no endpoint: {sorted(otel)}"
        else:
            assert otel.get("OTEL_EXPORTER_OTLP_ENDPOINT") == endpoint, f"{svc}: OTLP endpoint is {otel.get('OTEL_EXPORTER_OTLP_ENDPOINT')!r}"
            assert otel.get("OTEL_SERVICE_NAME") == f"shopmesh-{svc}", f"{svc}: OTEL_SERVICE_NAME is {otel.get('OTEL_SERVICE_NAME')!r}"
            assert "k8s.pod.name=$(K8S_POD_NAME)" in otel.get("OTEL_RESOURCE_ATTRIBUTES", ""), f"{svc}: no pod name in the resource attributes"
    return f"endpoint {endpoint}" if endpoint else "no endpoint, no OTEL_* variables"


def check_network_policy(r: Rendered) -> str:
    policies = r.kind("NetworkPolicy")
    np = r.values["networkPolicy"]
    if not np["enabled"]:
        assert not policies, "NetworkPolicies rendered with networkPolicy.enabled false"
        return "off: none rendered"
    services = services_of(r)
    bundled = statefulset_pg(r.values)
    nats = bool(r.values["nats"]["enabled"])
    assert len(policies) == len(services) + bundled + nats, f"{len(policies)} NetworkPolicies for {len(services)} services" + (" and PostgreSQL" if bundled else "") + (" and NATS" if nats else "")
    pod_labels = {s: r.one("Deployment", name(s))["spec"]["template"]["metadata"]["labels"] for s in services}
    public = public_methods(r.values, services)
    edge = np["edgeClients"]

    def policy_of(labels: dict) -> Manifest:
        (p,) = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
        assert set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}, f"{labels}: policy does not isolate both directions"
        return p

    for callee in services:
        port = SERVICES[callee][0]
        callers = [s for s in services if callee in settings(r, s).get("calls", [])]
        rules = [rule for rule in policy_of(pod_labels[callee])["spec"]["ingress"] if any(p["port"] == port for p in rule.get("ports", []))]
        peers = [peer for rule in rules for peer in rule.get("from", [{}])]
        allowed = {s for s in services for peer in peers if "podSelector" in peer and "namespaceSelector" not in peer and selects(peer["podSelector"]["matchLabels"], pod_labels[s])}
        assert allowed == set(callers), f"{callee}: gRPC port {port} is open to {sorted(allowed) or 'no service'}, not {sorted(callers) or 'none'}"
        outside = [p for p in peers if not ("podSelector" in p and "namespaceSelector" not in p) and p not in np["probeSources"]]
        # Callers of other teams with methods of this service (values: callers), then the edge,
        # which reaches exactly the services the policy lets the edge identity call.
        prefix = f"/{SERVICES[callee][1]}/"
        want_outside = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": c["namespace"]}}, "podSelector": c.get("podSelector") or {}}
                        for c in r.values.get("callers") or [] if any(m.startswith(prefix) for m in c["methods"])]
        want_outside += edge if callee in public else []
        assert outside == want_outside, f"{callee}: gRPC port {port} is open to {outside} from outside the release, expected {want_outside} (public: {sorted(public)})"
    for caller in services:
        egress = policy_of(pod_labels[caller])["spec"]["egress"]
        reach = {
            s for s in services for rule in egress for peer in rule.get("to", [])
            if "podSelector" in peer and selects(peer["podSelector"]["matchLabels"], pod_labels[s])
            and any(p["port"] == SERVICES[s][0] for p in rule.get("ports", []))
        }
        want = {c for c in settings(r, caller).get("calls", []) if c in services}
        assert reach == want, f"{caller} may call {sorted(reach)}, not {sorted(want)}"
    if bundled:
        pg_labels = r.one("StatefulSet", f"{RELEASE}-postgresql")["spec"]["template"]["metadata"]["labels"]
        pg = policy_of(pg_labels)
        peers = [peer for rule in pg["spec"]["ingress"] for peer in rule.get("from", [])]
        comps = sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers if "podSelector" in p)
        assert comps == sorted(services + ["migrate"]), f"PostgreSQL admits {comps}"
        assert pg["spec"].get("egress") == [], "PostgreSQL may call out"
        for s in services:
            egress = policy_of(pod_labels[s])["spec"]["egress"]
            assert any(selects(peer.get("podSelector", {}).get("matchLabels", {"-": "-"}), pg_labels) for rule in egress for peer in rule.get("to", [])), f"{s} may not reach PostgreSQL"
    if cloudnativepg(r.values):
        # The operator labels every instance with its cluster; primary and replicas alike.
        instance = {"cnpg.io/cluster": f"{RELEASE}-postgresql", "cnpg.io/instanceRole": "replica"}
        for s in services:
            egress = policy_of(pod_labels[s])["spec"]["egress"]
            assert any(selects(peer.get("podSelector", {}).get("matchLabels", {"-": "-"}), instance) and any(p["port"] == 5432 for p in rule.get("ports", []))
                       for rule in egress for peer in rule.get("to", [])), f"{s} may not reach the CloudNativePG instances"
    return f"on: callers {CALLS}, edge to {sorted(public) if edge else 'nobody'}"


def check_events(r: Rendered) -> str:
    """The broker of the services that use events, the chart's NATS, its policies, KEDA's lag triggers (check_events.py)."""
    return events.check_events(r, services_of(r), RELEASE, NAMESPACE, DOMAIN)


def check_nats_image_is_composes(chart: Chart) -> str:
    image = chart.merge_values({})["nats"]["image"]
    ours, compose = f"{image['repository']}:{image['tag']}", events.compose_nats_image()
    assert ours == compose, f"the chart's NATS image {ours} is not compose's {compose}: one broker version for both"
    return ours


def check_callers_admitted(r: Rendered) -> str:
    """Callers of other teams (values: callers) and the metrics scraper: admitted, and nobody else."""
    return check_callers.check_callers(r, {s: SERVICES[s] for s in services_of(r)}, NAMESPACE)


def check_service_monitor(r: Rendered) -> str:
    monitors = r.kind("ServiceMonitor")
    sm = r.values.get("serviceMonitor", {})
    if not sm.get("enabled"):
        assert not monitors, "ServiceMonitors rendered with serviceMonitor.enabled false"
        return "off: none rendered"
    nats = bool(r.values["nats"]["enabled"] and r.values["nats"]["metrics"]["enabled"])  # its own, checked by check_events
    assert len(monitors) == len(services_of(r)) + nats, f"{len(monitors)} ServiceMonitors for {len(services_of(r))} services" + (" and NATS" if nats else "")
    for svc in services_of(r):
        service = r.one("Service", headless(svc))
        matching = [m for m in monitors if selects(m["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])]
        assert len(matching) == 1, f"{svc}: {len(matching)} ServiceMonitors select its Service"
        (endpoint,) = matching[0]["spec"]["endpoints"]
        assert endpoint["port"] == "metrics" and endpoint.get("path") == "/metrics", f"{svc}: ServiceMonitor scrapes {endpoint}"
        assert any(p["name"] == "metrics" for p in service["spec"]["ports"]), f"{svc}: its Service has no metrics port"
        for k, v in sm.get("labels", {}).items():
            assert matching[0]["metadata"]["labels"].get(k) == v, f"{svc}: ServiceMonitor lacks label {k}={v}"
    return "on: one per service, port metrics"


def check_file_access(r: Rendered) -> str:
    """Every file a container is told about is readable by its process as the kubelet lays it out
    (uid, fsGroup, modes: kubelet_files.py), and private keys by nobody else."""
    reads = 0
    for kind in ("Deployment", "StatefulSet", "Job", "Pod"):
        for obj in r.kind(kind):
            pod = obj["spec"] if kind == "Pod" else obj["spec"]["template"]["spec"]
            try:
                reads += len(kubelet_files.access(pod))
            except AssertionError as e:
                raise AssertionError(f"{kind} {obj['metadata']['name']}: {e}")
    return f"{reads} file reads, each allowed by owner, group or mode"


def check_deterministic(r: Rendered) -> str:
    """Two renders of the same values roll nothing: every pod template is the same (no checksum
    of a generated secret). Where nothing is generated (existing Secrets, GitOps), every object
    is the same: a sync changes nothing."""
    again = Rendered(r.chart, r.input)
    templates = lambda x: {(k, o["metadata"]["name"]): o["spec"]["template"] for k in ("Deployment", "StatefulSet") for o in x.kind(k)}  # noqa: E731
    first, second = templates(r), templates(again)
    changed = sorted(f"{k}/{n}" for k, n in first if first[(k, n)] != second.get((k, n)))
    assert not changed, f"two renders of the same values differ in the pod templates of {changed}: every sync would roll them"
    if not r.values["generateSecretsWithoutCluster"]:
        diff = sorted(f"{o['kind']}/{o['metadata']['name']}" for (_, o), (_, p) in zip(r.objects, again.objects) if o != p)
        assert not diff and len(r.objects) == len(again.objects), f"two renders of the same values differ in {diff}"
        return f"{len(r.objects)} objects identical across renders"
    return f"{len(first)} pod templates identical across renders"


TLS_ENV = ("SHOPMESH_TLS_CERT", "SHOPMESH_TLS_KEY", "SHOPMESH_TLS_CA", "SHOPMESH_PROBE_LISTEN")


def check_tls(r: Rendered) -> str:
    tls = r.values["tls"]
    certs = {c["spec"]["secretName"]: c for c in r.kind("Certificate")}
    ca_secret = tls["chartCA"]["existingSecret"] or f"{RELEASE}-mesh-ca"
    issued = []
    for svc in services_of(r):
        pod = r.one("Deployment", name(svc))["spec"]["template"]["spec"]
        container = container_of(r, svc)
        env = env_of(container)
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        inits = [c for c in pod.get("initContainers", []) if c["name"] == "issue-certificate"]
        if not tls_on(r.values):
            assert not [k for k in TLS_ENV if k in env], f"{svc}: TLS settings with mTLS off"
            assert "probe" not in ports, f"{svc}: a probe port with mTLS off"
            assert not [v for v in volumes.values() if "secret" in v], f"{svc}: a Secret volume with mTLS off"
            assert not inits, f"{svc}: a certificate issuer with mTLS off"
            continue
        spiffe = f"spiffe://{tls['trustDomain']}/ns/{NAMESPACE}/sa/{name(svc)}"
        # Each file must lie in a read-only mount: of this service's own Secret, or of the
        # in-memory volume its init container writes with the chart's CA.
        want = tls["secretNames"].get(svc) or f"{name(svc)}-tls"
        tls_dirs = set()
        for var, key in (("SHOPMESH_TLS_CERT", "tls.crt"), ("SHOPMESH_TLS_KEY", "tls.key"), ("SHOPMESH_TLS_CA", "ca.crt")):
            path = env.get(var)
            assert isinstance(path, str) and path.endswith("/" + key), f"{svc}: {var} is {path!r}, not a {key}"
            mount = mounts.get(path.rsplit("/", 1)[0])
            assert mount and mount.get("readOnly") is True, f"{svc}: {var} {path} is not in a read-only mount"
            volume = volumes[mount["name"]]
            if chart_issued(r.values, svc) and var == "SHOPMESH_TLS_CA":
                # The CAs to trust come from the CA Secret's ca.crt, which the kubelet updates in
                # place and the service re-reads: a rotation's new CA is trusted before any pod
                # presents it. Its key is not projected.
                secret = volume.get("secret", {})
                assert secret.get("secretName") == ca_secret and secret.get("items") == [{"key": "ca.crt", "path": "ca.crt"}], (
                    f"{svc}: the trust bundle is {volume}, not the CA Secret's ca.crt alone (a new CA could not be trusted before pods present it)"
                )
                continue
            tls_dirs.add(path.rsplit("/", 1)[0])
            if chart_issued(r.values, svc):
                assert volume.get("emptyDir", {}).get("medium") == "Memory", f"{svc}: {var} is not in an in-memory volume of the pod's own ({volume})"
            else:
                secret = volume.get("secret", {})
                assert secret.get("secretName") == want, f"{svc}: {var} comes from Secret {secret.get('secretName')!r}, not {want!r}"
                assert secret.get("defaultMode", 0o644) & 0o007 == 0, f"{svc}: the TLS Secret's files are readable by others"
        assert env.get("SHOPMESH_TRUST_DOMAIN") == tls["trustDomain"], f"{svc}: trust domain is {env.get('SHOPMESH_TRUST_DOMAIN')!r}"
        assert env.get("SHOPMESH_PROBE_LISTEN") == f"0.0.0.0:{tls['probePort']}", f"{svc}: probe port listens on {env.get('SHOPMESH_PROBE_LISTEN')!r}"
        assert ports.get("probe") == tls["probePort"] != ports.get("grpc"), f"{svc}: probe port {ports.get('probe')} is not a port of its own"
        # The CA's key is mounted into the issuer alone, never into the service's container.
        ca_volumes = {n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == ca_secret
                      and any(i["key"] == "tls.key" for i in v["secret"].get("items", [{"key": "tls.key"}]))}
        assert not [m for m in container.get("volumeMounts", []) if m["name"] in ca_volumes], f"{svc}: the CA's key is mounted into the service's container"
        if chart_issued(r.values, svc):
            assert len(inits) == 1 and pod["initContainers"][0]["name"] == "issue-certificate", f"{svc}: the certificate issuer is not the first init container"
            init = inits[0]
            args = init["args"]
            assert args[0] == "issue-certificate", f"{svc}: the init container runs {args}"
            flags = dict(a.removeprefix("--").split("=", 1) for a in args[1:])
            assert flags.get("spiffe-id") == spiffe, f"{svc}: the init container issues {flags.get('spiffe-id')}, not its ServiceAccount's {spiffe}"
            assert flags.get("validity") == tls["chartCA"]["duration"], f"{svc}: validity {flags.get('validity')}, not tls.chartCA.duration"
            assert flags.get("dns") == fqdn(headless(svc)).rstrip("."), f"{svc}: DNS name {flags.get('dns')}"
            assert init["image"] == container["image"], f"{svc}: the issuer runs {init['image']}, not the service's image"
            init_mounts = {m["mountPath"]: m for m in init.get("volumeMounts", [])}
            (tls_dir,) = tls_dirs
            assert flags.get("out") == tls_dir and init_mounts.get(tls_dir, {}).get("readOnly") is not True, f"{svc}: the issuer does not write where the service reads ({flags.get('out')} vs {tls_dir})"
            assert init_mounts[tls_dir]["name"] == mounts[tls_dir]["name"], f"{svc}: the issuer writes another volume than the service reads"
            for flag, key in (("ca-cert", "tls.crt"), ("ca-key", "tls.key")):
                path = flags.get(flag, "")
                assert path.endswith("/" + key), f"{svc}: --{flag} is {path!r}"
                mount = init_mounts.get(path.rsplit("/", 1)[0])
                assert mount and mount.get("readOnly") is True, f"{svc}: --{flag} is not in a read-only mount"
                secret = volumes[mount["name"]].get("secret", {})
                assert secret.get("secretName") == ca_secret, f"{svc}: the CA comes from {secret.get('secretName')!r}, not {ca_secret!r}"
                assert secret.get("defaultMode", 0o644) & 0o007 == 0, f"{svc}: the CA Secret's files are readable by others"
            # A new CA must not roll the pods at once: those still running would not trust the new
            # pods until the bundle reached them (the rotation in the README rolls them later).
            annotations = r.one("Deployment", name(svc))["spec"]["template"]["metadata"].get("annotations", {})
            assert "checksum/mesh-ca" not in annotations, f"{svc}: a new CA rolls the pods at once (old pods would refuse the new ones)"
            issued.append(svc)
        else:
            assert not inits, f"{svc}: an issuer although its certificate comes from a Secret"
        if cert_manager_on(r.values):
            cert = certs.get(want)
            assert cert, f"{svc}: no cert-manager Certificate writes Secret {want}"
            assert cert["spec"].get("uris") == [spiffe], f"{svc}: certificate identity {cert['spec'].get('uris')}, not its ServiceAccount's {spiffe}"
            assert {"client auth", "server auth"} <= set(cert["spec"].get("usages", [])), f"{svc}: certificate usages {cert['spec'].get('usages')}"
    made = [x for x in r.kind("Secret") if x["metadata"]["name"] == f"{RELEASE}-mesh-ca"]
    if issued and not tls["chartCA"]["existingSecret"]:
        (ca,) = made
        assert ca["type"] == "kubernetes.io/tls" and {"tls.crt", "tls.key", "ca.crt"} <= set(ca["data"]), "the mesh CA Secret lacks tls.crt/tls.key/ca.crt"
        assert ca["data"]["ca.crt"] == ca["data"]["tls.crt"], "a new CA's trust bundle is not its own certificate"
        assert "helm.sh/hook" not in ca["metadata"].get("annotations", {}), "the CA Secret is a hook: it would be made anew"
    else:
        assert not made, "the chart makes a CA nobody uses (or one beside tls.chartCA.existingSecret)"
    if not cert_manager_on(r.values):
        assert not r.kind("Certificate") and not r.kind("Issuer"), "cert-manager objects with cert-manager off"
        if not tls_on(r.values):
            return "off: no TLS settings"
        own = sorted(set(services_of(r)) - set(issued))
        return f"on: {', '.join(issued) or 'none'} from the chart's CA ({ca_secret})" + (f"; {', '.join(own)} from your Secrets" if own else "")
    issuer = tls["certManager"]["issuerRef"]
    for cert in certs.values():
        if cert["spec"].get("isCA"):
            continue
        ref = cert["spec"]["issuerRef"]
        if issuer:
            assert ref["name"] == issuer["name"] and ref.get("kind") == issuer.get("kind"), f"{cert['metadata']['name']}: issued by {ref}, not {issuer}"
        else:
            ca = r.one("Issuer", ref["name"])
            ca_cert = r.one("Certificate", ref["name"])
            assert ca["spec"]["ca"]["secretName"] == ca_cert["spec"]["secretName"] and ca_cert["spec"].get("isCA") is True, "the mesh CA Issuer does not sign with the CA certificate"
            assert "selfSigned" in r.one("Issuer", ca_cert["spec"]["issuerRef"]["name"])["spec"], "the mesh CA is not self-signed"
    if issuer:
        assert not r.kind("Issuer"), "the chart creates a CA although tls.certManager.issuerRef names one"
    return f"on: cert-manager, {len(certs)} certificates with SPIFFE IDs, probes on {tls['probePort']}"


def shipped_policy_rules(namespace: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """deploy/authz-policy.json (written for namespace default) as (callers, methods) pairs."""
    text = (ROOT / "deploy" / "authz-policy.json").read_text().replace("/ns/default/", f"/ns/{namespace}/")
    return [(tuple(rule["callers"]), tuple(rule["methods"])) for rule in json.loads(text)["rules"]]


def check_authz(r: Rendered) -> str:
    maps = [c for c in r.kind("ConfigMap") if c["metadata"]["name"] == f"{RELEASE}-authz-policy"]
    if not authz_on(r.values):
        assert not maps, "authz policy ConfigMap rendered with the policy off"
        for svc in services_of(r):
            assert "SHOPMESH_AUTHZ_POLICY" not in env_of(container_of(r, svc)), f"{svc}: a policy with authz off"
        return "off: no policy"
    (cm,) = maps
    policy = json.loads(cm["data"]["policy.json"])
    got = [(tuple(rule["callers"]), tuple(rule["methods"])) for rule in policy["rules"]]
    # The chart's default policy is the shipped file, in the release's namespace, followed by one
    # rule per caller of another team (values: callers; check_callers_admitted decides them).
    own_rules = len(got) - len(r.values.get("callers") or [])
    if r.values["authz"]["policy"] == Chart_default_policy[0]:
        assert got[:own_rules] == shipped_policy_rules(NAMESPACE), f"the chart's policy differs from deploy/authz-policy.json:\n{got}"
    # With tokens on, the edge must present the user's token on every call: the policy names it
    # an edge. With tokens off there is no token to ask for, and the services refuse to start
    # with edges named (so none may be).
    edge = f"spiffe://{r.values['tls']['trustDomain']}/ns/{NAMESPACE}/sa/{r.values['edge']['identity']}"
    if r.values["jwt"]["jwks"]:
        assert policy.get("edges") == [edge], f"tokens on, but the policy's edges are {policy.get('edges')}, not [{edge}]"
    else:
        assert "edges" not in policy, f"tokens off, but the policy names edges: {policy['edges']}"
    charge = [callers for callers, methods in got if "/shopmesh.payment.v1.PaymentService/Charge" in methods]
    assert charge == [(f"spiffe://{r.values['tls']['trustDomain']}/ns/{NAMESPACE}/sa/{name('order')}",)], f"Charge may be called by {charge}"
    for svc in services_of(r):
        deploy = r.one("Deployment", name(svc))
        pod = deploy["spec"]["template"]["spec"]
        container = container_of(r, svc)
        path = env_of(container).get("SHOPMESH_AUTHZ_POLICY")
        assert isinstance(path, str) and path.endswith("/policy.json"), f"{svc}: SHOPMESH_AUTHZ_POLICY is {path!r}"
        mount = {m["mountPath"]: m for m in container.get("volumeMounts", [])}.get(path.rsplit("/", 1)[0])
        assert mount and mount.get("readOnly") is True, f"{svc}: the policy {path} is not in a read-only mount"
        volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
        assert volume.get("configMap", {}).get("name") == cm["metadata"]["name"], f"{svc}: the policy mount is not the policy ConfigMap"
        ann = deploy["spec"]["template"]["metadata"].get("annotations", {})
        assert "checksum/authz-policy" in ann, f"{svc}: pods do not roll when the policy changes"
    return f"on: {len(got)} rules, mounted in every service"


def check_shipped_policy() -> str:
    """The catalog's rules, in deploy/authz-policy.json (the chart's must equal it: check_authz)."""
    rules = shipped_policy_rules("default")
    who = lambda method: sorted({c for callers, methods in rules if method in methods for c in callers})  # noqa: E731
    sa = lambda n: f"spiffe://cluster.local/ns/default/sa/{n}"  # noqa: E731
    for m in ("CreateProduct", "UpdateProduct"):
        assert who(f"/shopmesh.catalog.v1.CatalogService/{m}") == [sa("shopmesh-admin")], f"{m} may be called by {who(f'/shopmesh.catalog.v1.CatalogService/{m}')}"
    # Inventory reads one product at a time: whether a SKU whose stock is set exists.
    readers = {"GetProduct": ["shopmesh-gateway", "shopmesh-inventory", "shopmesh-order"]}
    for m in ("GetProduct", "ListProducts", "BatchGetProducts"):
        want = sorted(sa(n) for n in readers.get(m, ["shopmesh-gateway", "shopmesh-order"]))
        assert who(f"/shopmesh.catalog.v1.CatalogService/{m}") == want, f"{m} may be called by {who(f'/shopmesh.catalog.v1.CatalogService/{m}')}"
    assert not [1 for _, methods in rules if "/shopmesh.catalog.v1.CatalogService/*" in methods], "a rule allows every catalog method"
    return "catalog: admin writes; order and gateway read, inventory reads a product"


# The chart's default authz.policy, filled in by run_checks (compared to the shipped file).
Chart_default_policy: list[dict] = [{}]


def check_in_flight_metric(r: Rendered) -> str:
    states = []
    for svc in services_of(r):
        as_ = settings(r, svc)["autoscaling"]
        if not as_["enabled"] or as_["keda"]["enabled"]:
            continue
        s = as_["inFlightRequests"]
        hpa = r.one("HorizontalPodAutoscaler", name(svc))
        pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        if s["enabled"]:
            assert len(pods) == 1, f"{svc}: in-flight metric enabled but the HPA has {len(pods)} Pods metrics"
            assert pods[0]["pods"]["metric"]["name"] == s["metricName"], f"{svc}: HPA uses metric {pods[0]['pods']['metric']['name']}"
            assert pods[0]["pods"]["target"]["type"] == "AverageValue", f"{svc}: in-flight target is not a per-pod average"
            # The adapter rule serving it, shipped in docs/operations.md, must exist and leave
            # infrastructure calls out.
            ops = (ROOT / "docs" / "operations.md").read_text()
            assert f'name: {{as: "{s["metricName"]}"}}' in ops or f"as: {s['metricName']}" in ops, f"docs/operations.md has no adapter rule serving {s['metricName']}"
        else:
            assert not pods, f"{svc}: in-flight metric disabled but the HPA has a Pods metric"
        states.append(f"{svc} {'on' if s['enabled'] else 'off'}")
    return ", ".join(states) or "no HPA"


# A JSON Web Key Set with one public Ed25519 key, for the renderings with bearer tokens on.
JWKS = '{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'
JWKS_DIR = "/etc/shopmesh/jwt"


def check_jwt(r: Rendered) -> str:
    jwt = r.values.get("jwt", {})
    maps = [m for m in r.kind("ConfigMap") if m["metadata"]["name"] == f"{RELEASE}-jwks"]
    for svc in services_of(r):
        pod_template = r.one("Deployment", name(svc))["spec"]["template"]
        pod = pod_template["spec"]
        container = container_of(r, svc)
        env = env_of(container)
        jwt_env = {k: v for k, v in env.items() if k.startswith("SHOPMESH_JWT_")}
        if not jwt.get("jwks"):
            assert not jwt_env, f"{svc}: bearer-token variables set with no jwt.jwks: {sorted(jwt_env)}"
            jwt_mounts = [m for m in container.get("volumeMounts", []) if m.get("mountPath") == JWKS_DIR]
            jwt_volumes = [v for v in pod.get("volumes", []) if v.get("name") == "jwt"]
            assert not jwt_mounts and not jwt_volumes, f"{svc}: a key-set volume with tokens off"
            continue
        cfg = settings(r, svc)
        assert env.get("SHOPMESH_JWT_JWKS") == f"{JWKS_DIR}/jwks.json", f"{svc}: SHOPMESH_JWT_JWKS is {env.get('SHOPMESH_JWT_JWKS')!r}"
        assert env.get("SHOPMESH_JWT_ISSUER") == jwt["issuer"], f"{svc}: issuer {env.get('SHOPMESH_JWT_ISSUER')!r}"
        assert env.get("SHOPMESH_JWT_AUDIENCE") == jwt["audience"], f"{svc}: audience {env.get('SHOPMESH_JWT_AUDIENCE')!r}"
        assert env.get("SHOPMESH_JWT_REQUIRE") == cfg["jwtRequire"], f"{svc}: requires tokens {env.get('SHOPMESH_JWT_REQUIRE')!r}, not {cfg['jwtRequire']!r}"
        (mount,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == JWKS_DIR]
        assert mount.get("readOnly") is True, f"{svc}: key set mounted writable"
        (volume,) = [v for v in pod.get("volumes", []) if v["name"] == mount["name"]]
        assert len(maps) == 1 and volume.get("configMap", {}).get("name") == maps[0]["metadata"]["name"], f"{svc}: mounts {volume}, not the key-set ConfigMap"
        assert "checksum/jwks" in pod_template["metadata"].get("annotations", {}), f"{svc}: pods do not roll when the key set changes"
    if not jwt.get("jwks"):
        assert not maps, "a key-set ConfigMap with jwt.jwks empty"
        return "off: no variables, no ConfigMap"
    assert maps[0]["data"] == {"jwks.json": jwt["jwks"]}, "the ConfigMap does not hold jwt.jwks as jwks.json"
    return "on: " + ", ".join(f"{svc} {settings(r, svc)['jwtRequire']}" for svc in services_of(r))


def check_limits(r: Rendered) -> str:
    for svc in services_of(r):
        limits = settings(r, svc)["limits"]
        env = env_of(container_of(r, svc))
        want = {
            "SHOPMESH_MAX_METADATA_BYTES": str(limits["maxMetadataBytes"]),
            "SHOPMESH_RATE_LIMIT_RPS": str(limits["rateLimitRps"]),
            "SHOPMESH_RATE_LIMIT_BURST": str(limits["rateLimitBurst"]),
        }
        got = {k: env.get(k) for k in want}
        assert got == want, f"{svc}: limits {got}, expected {want}"
    return ", ".join(f"{svc} {settings(r, svc)['limits']['rateLimitRps']}/s" for svc in services_of(r))


def check_extension_points(r: Rendered) -> str:
    """Whatever the values add to a pod (defaults merged with the service's own) is in the pod."""
    used = set()
    for svc in services_of(r):
        cfg = settings(r, svc)
        deploy = r.one("Deployment", name(svc))
        meta = deploy["spec"]["template"]["metadata"]
        pod = deploy["spec"]["template"]["spec"]
        container = container_of(r, svc)
        for k, v in cfg.get("podAnnotations", {}).items():
            assert meta.get("annotations", {}).get(k) == v, f"{svc}: pod annotation {k} missing"
            used.add("podAnnotations")
        for k, v in cfg.get("podLabels", {}).items():
            if k not in deploy["spec"]["selector"]["matchLabels"]:
                assert meta["labels"].get(k) == v, f"{svc}: pod label {k} missing"
                used.add("podLabels")
        assert selects(deploy["spec"]["selector"]["matchLabels"], meta["labels"]), f"{svc}: podLabels override the selector labels"
        for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
            if cfg.get(key):
                assert pod.get(key) == cfg[key], f"{svc}: {key} is {pod.get(key)!r}, not {cfg[key]!r}"
                used.add(key)
        for key, where in (("initContainers", pod.get("initContainers", [])), ("extraVolumes", pod.get("volumes", [])),
                           ("extraVolumeMounts", container.get("volumeMounts", [])), ("envFrom", container.get("envFrom", []))):
            for item in cfg.get(key, []):
                assert item in where, f"{svc}: {key} item {item} missing"
                used.add(key)
        for item in cfg.get("extraContainers", []):
            assert item in pod["containers"], f"{svc}: extra container {item.get('name')} missing"
            used.add("extraContainers")
        for item in cfg.get("extraEnv", []):
            assert item in container.get("env", []), f"{svc}: extraEnv {item['name']} missing"
            used.add("extraEnv")
        for k, v in cfg.get("serviceAccount", {}).get("annotations", {}).items():
            assert r.one("ServiceAccount", name(svc))["metadata"].get("annotations", {}).get(k) == v, f"{svc}: ServiceAccount annotation {k} missing"
            used.add("serviceAccount.annotations")
        if cfg.get("topologySpreadConstraints") is not None:
            used.add("topologySpreadConstraints")
    return ", ".join(sorted(used)) or "none set"


EXTENSION_KEYS = ("podAnnotations", "podLabels", "nodeSelector", "tolerations", "affinity", "priorityClassName", "serviceAccount",
                  "extraEnv", "envFrom", "extraVolumes", "extraVolumeMounts", "extraContainers")


def check_workload_extensions(r: Rendered) -> str:
    """The migration Job (defaults' extension points, then migration's) and the PostgreSQL
    StatefulSet (postgresql's) take what the services take; the Job's extra containers are
    native sidecars, so it completes with them."""
    done = []
    targets = []
    jobs = [j for j in r.kind("Job") if j["metadata"]["name"] == f"{RELEASE}-migrate"]
    if jobs:
        cfg = {k: r.values["defaults"][k] for k in EXTENSION_KEYS if k in r.values["defaults"]}
        targets.append(("migration Job", jobs[0], merged(cfg, r.values.get("migration") or {}), f"{RELEASE}-migrate"))
    if statefulset_pg(r.values):
        targets.append(("PostgreSQL", r.one("StatefulSet", f"{RELEASE}-postgresql"), {k: r.values["postgresql"].get(k) for k in EXTENSION_KEYS}, f"{RELEASE}-postgresql"))
    for what, obj, cfg, sa_name in targets:
        meta, pod = obj["spec"]["template"]["metadata"], obj["spec"]["template"]["spec"]
        used = []
        for k, v in (cfg.get("podAnnotations") or {}).items():
            assert meta.get("annotations", {}).get(k) == v, f"{what}: pod annotation {k} missing"
            used.append("podAnnotations")
        for k, v in (cfg.get("podLabels") or {}).items():
            if k not in ("app.kubernetes.io/component", "app.kubernetes.io/name", "app.kubernetes.io/instance"):
                assert meta["labels"].get(k) == v, f"{what}: pod label {k} missing"
                used.append("podLabels")
        for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
            if cfg.get(key):
                assert pod.get(key) == cfg[key], f"{what}: {key} is {pod.get(key)!r}, not {cfg[key]!r}"
                used.append(key)
        assert pod.get("serviceAccountName") == sa_name and pod.get("automountServiceAccountToken") is False, f"{what}: not its own ServiceAccount without a token"
        sa = r.one("ServiceAccount", sa_name)
        for k, v in ((cfg.get("serviceAccount") or {}).get("annotations") or {}).items():
            assert sa["metadata"].get("annotations", {}).get(k) == v, f"{what}: ServiceAccount annotation {k} missing"
            used.append("serviceAccount.annotations")
        mains = [c for c in pod["containers"] if c["name"] not in {x["name"] for x in cfg.get("extraContainers") or []}]
        for key, where in (("extraEnv", "env"), ("envFrom", "envFrom"), ("extraVolumeMounts", "volumeMounts")):
            for item in cfg.get(key) or []:
                for c in mains:
                    assert item in c.get(where, []), f"{what}/{c['name']}: {key} item {item} missing"
                used.append(key)
        for item in cfg.get("extraVolumes") or []:
            assert item in pod.get("volumes", []), f"{what}: extraVolumes item {item['name']} missing"
            used.append("extraVolumes")
        for item in cfg.get("extraContainers") or []:
            if obj["kind"] == "Job":
                # A regular container that never exits would keep the Job from completing.
                assert item["name"] not in {c["name"] for c in pod["containers"]}, f"{what}: extra container {item['name']} is a regular container: the Job would never complete"
                inits = pod.get("initContainers", [])
                found = [i for i, c in enumerate(inits) if c["name"] == item["name"]]
                assert found and inits[found[0]].get("restartPolicy") == "Always", f"{what}: extra container {item['name']} is not a native sidecar (an init container with restartPolicy Always)"
                wait = [i for i, c in enumerate(inits) if c["name"] == "wait-for-database"]
                assert found[0] < wait[0], f"{what}: sidecar {item['name']} starts after the database wait (which may need it)"
            else:
                assert item in pod["containers"], f"{what}: extra container {item['name']} missing"
            used.append("extraContainers")
        done.append(f"{what}: {', '.join(sorted(set(used))) or 'none set'}")
    return "; ".join(done) or "no Job, no PostgreSQL"


def check_values_honoured(r: Rendered) -> str:
    """What renders wrong silently otherwise: global.imageRegistry on every image the chart picks,
    commonLabels on every object and pod, payment's own ledger volume beside the values' lists."""
    done = []
    registry = (r.values.get("global") or {}).get("imageRegistry")
    own_images = (r.values["image"]["repository"], r.values["postgresql"]["image"]["repository"], r.values["nats"]["image"]["repository"],
                  r.values["nats"]["metrics"]["image"]["repository"])
    theirs = {c["name"] for k in ("defaults", "migration") for c in ((r.values.get(k) or {}).get("extraContainers") or []) + ((r.values.get(k) or {}).get("initContainers") or [])}
    images = 0
    for _, obj in r.objects:
        spec = obj.get("spec", {})
        pod = spec if obj["kind"] == "Pod" else spec.get("template", {}).get("spec")
        if not pod:
            continue
        for c in pod.get("initContainers", []) + pod["containers"]:
            if c["name"] in theirs:
                continue
            want = [f"{registry}/{repo}" if registry else repo for repo in own_images]
            assert any(c["image"].startswith(w + ":") or c["image"].startswith(w + "@") for w in want), f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}: image {c['image']} is not from {want}"
            images += 1
    done.append(f"{images} images" + (f" from {registry}" if registry else ""))
    common = r.values.get("commonLabels") or {}
    for _, obj in r.objects:
        for k, v in common.items():
            assert obj["metadata"].get("labels", {}).get(k) == v, f"{obj['kind']}/{obj['metadata']['name']}: no commonLabel {k}={v}"
            tmpl = obj.get("spec", {}).get("template", {}).get("metadata")
            if tmpl is not None:
                assert tmpl.get("labels", {}).get(k) == v, f"{obj['kind']}/{obj['metadata']['name']}: its pods lack commonLabel {k}={v}"
    if common:
        done.append(f"commonLabels on {len(r.objects)} objects")
    if "payment" in services_of(r):
        pod = r.one("Deployment", name("payment"))["spec"]["template"]["spec"]
        volumes = pod.get("volumes", [])
        assert {"name": "processor-ledger", "emptyDir": {}} in volumes, "payment: its processor ledger volume is missing (the read-only root filesystem refuses the ledger)"
        cfg = settings(r, "payment")
        for v in cfg.get("extraVolumes", []):
            assert v in volumes, f"payment: the values' volume {v['name']} was replaced by the chart's own"
        done.append(f"payment's ledger volume beside {len(cfg.get('extraVolumes', []))} of the values'")
    return ", ".join(done)


def check_security_contexts(r: Rendered) -> str:
    """The pods and containers carry the security contexts the values give (defaults, the
    service's, migration's, postgresql's), and nothing fixes a uid the values leave to the
    platform (OpenShift)."""
    d = r.values["defaults"]
    checked = 0
    for svc in services_of(r):
        cfg = settings(r, svc)
        pod = r.one("Deployment", name(svc))["spec"]["template"]["spec"]
        assert pod["securityContext"] == cfg["podSecurityContext"], f"{svc}: pod securityContext {pod['securityContext']}, not the values' {cfg['podSecurityContext']}"
        for c in pod["containers"] + pod.get("initContainers", []):
            if c["name"] in (svc, "issue-certificate"):
                assert c["securityContext"] == cfg["securityContext"], f"{svc}/{c['name']}: securityContext {c['securityContext']}, not the values' {cfg['securityContext']}"
                checked += 1
    jobs = [j for j in r.kind("Job") if j["metadata"]["name"] == f"{RELEASE}-migrate"]
    if jobs:
        m = merged({k: d[k] for k in ("podSecurityContext", "securityContext")}, r.values.get("migration") or {})
        pod = jobs[0]["spec"]["template"]["spec"]
        assert pod["securityContext"] == m["podSecurityContext"], f"migration Job: pod securityContext {pod['securityContext']}, not the values'"
        for c in pod["containers"]:
            assert c["securityContext"] == m["securityContext"], f"migration Job/{c['name']}: securityContext {c['securityContext']}"
            checked += 1
    if statefulset_pg(r.values):
        pg = r.values["postgresql"]
        pod = r.one("StatefulSet", f"{RELEASE}-postgresql")["spec"]["template"]["spec"]
        assert pod["securityContext"] == pg["podSecurityContext"], f"PostgreSQL: pod securityContext {pod['securityContext']}, not the values'"
        assert pod["containers"][0]["securityContext"] == pg["securityContext"], "PostgreSQL: container securityContext is not the values'"
        checked += 1
    platform = "runAsUser" not in d["podSecurityContext"] and "runAsUser" not in r.values["postgresql"]["podSecurityContext"]
    if platform:
        fixed = [f"{o['kind']}/{o['metadata']['name']}" for _, o in r.objects if "runAsUser" in json.dumps(o) or "fsGroup" in json.dumps(o)]
        assert not fixed, f"ids left to the platform, yet {fixed} fix a uid or fsGroup"
    return f"{checked} containers as the values say" + ("; no uid or fsGroup fixed (the platform assigns them)" if platform else "")


def check_edge(r: Rendered) -> str:
    services = services_of(r)
    public = public_methods(r.values, services)
    routes = r.kind("GRPCRoute")
    ingresses = r.kind("Ingress")
    if not r.values["gateway"]["enabled"]:
        assert not routes, "GRPCRoutes with gateway.enabled false"
    else:
        assert sorted(rt["spec"]["rules"][0]["backendRefs"][0]["name"] for rt in routes) == sorted(headless(s) for s in public), (
            f"GRPCRoutes reach {[rt['spec']['rules'][0]['backendRefs'] for rt in routes]}, not the public {sorted(public)}"
        )
        for rt in routes:
            (rule,) = rt["spec"]["rules"]
            (backend,) = rule["backendRefs"]
            (svc,) = [s for s in public if headless(s) == backend["name"]]
            assert backend["port"] == SERVICES[svc][0], f"{svc}: route to port {backend['port']}"
            assert rt["spec"]["parentRefs"] == r.values["gateway"]["parentRefs"], f"{svc}: parentRefs {rt['spec']['parentRefs']}"
            assert rt["spec"].get("hostnames", []) == r.values["gateway"]["hostnames"], f"{svc}: hostnames {rt['spec'].get('hostnames')}"
            got = sorted(f"/{m['method']['service']}/{m['method'].get('method', '*')}" for m in rule["matches"])
            assert got == sorted(public[svc]), f"{svc}: the route matches {got}, not what the policy lets the edge call {sorted(public[svc])}"
    if not r.values["ingress"]["enabled"]:
        assert not ingresses, "an Ingress with ingress.enabled false"
    else:
        backends = {}
        for ing in ingresses:
            ann = ing["metadata"]["annotations"]
            assert ing["spec"]["ingressClassName"] == r.values["ingress"]["className"], "IngressClass"
            if tls_on(r.values):
                assert ann.get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPCS", f"{ing['metadata']['name']}: not gRPC over TLS to the mTLS services"
                assert ann.get("nginx.ingress.kubernetes.io/proxy-ssl-secret") == f"{NAMESPACE}/{edge_secret(r.values)}", f"{ing['metadata']['name']}: does not present the edge's certificate"
                edge_cert = [c for c in r.kind("Certificate") if c["spec"]["secretName"] == edge_secret(r.values)]
                if cert_manager_on(r.values):
                    assert edge_cert and edge_cert[0]["spec"]["uris"] == [f"spiffe://{r.values['tls']['trustDomain']}/ns/{NAMESPACE}/sa/{r.values['edge']['identity']}"], "the edge's certificate does not carry the edge identity"
            else:
                assert ann.get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPC", f"{ing['metadata']['name']}: backend protocol {ann.get('nginx.ingress.kubernetes.io/backend-protocol')}"
            for rule in ing["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    svc = path["backend"]["service"]["name"]
                    backends.setdefault(svc, set()).add((path["path"], path["pathType"]))
        want = {headless(s): {(m.rstrip("*"), "Prefix" if m.endswith("/*") else "Exact") for m in ms} for s, ms in public.items()}
        assert backends == want, f"the Ingress routes {backends}, not what the policy lets the edge call {want}"
    if not (routes or ingresses):
        return "off"
    # Whoever the edge reaches has an identity: mTLS (the edge's certificate) or a required token.
    if not tls_on(r.values):
        for s in public:
            assert r.values["jwt"]["jwks"] and settings(r, s)["jwtRequire"] == "unidentified", f"{s}: exposed without mTLS and without a required token"
    return f"{len(routes)} GRPCRoutes, {len(ingresses)} Ingresses to {sorted(public)} ({'mTLS' if tls_on(r.values) else 'bearer tokens'})"


def check_prometheus_rule(r: Rendered) -> str:
    rules = r.kind("PrometheusRule")
    if not r.values["prometheusRule"]["enabled"]:
        assert not rules, "a PrometheusRule with prometheusRule.enabled false"
        return "off"
    (pr,) = rules
    groups = pr["spec"]["groups"]
    records = {rule["record"] for g in groups for rule in g["rules"] if "record" in rule}
    alerts = {rule["alert"]: rule for g in groups for rule in g["rules"] if "alert" in rule}
    want = {"ShopmeshErrorsBudgetBurnFast", "ShopmeshErrorsBudgetBurnSlow", "ShopmeshLatencyBudgetBurnFast", "ShopmeshLatencyBudgetBurnSlow",
            "ShopmeshReconcilerPendingTooOld", "ShopmeshCallsShed", "ShopmeshCallsRateLimited", "ShopmeshRetryBudgetExhausted",
            "ShopmeshOrderPaymentMismatch"}
    assert want <= set(alerts), f"alerts missing: {sorted(want - set(alerts))}"
    # Every alert links its runbook: a section of docs/operations.md that exists.
    sections = runbook_anchors()
    base = r.values["prometheusRule"]["runbookUrl"]
    for alert, rule in alerts.items():
        url = rule.get("annotations", {}).get("runbook_url", "")
        page, _, anchor = url.partition("#")
        assert page == base and anchor == alert.lower(), f"{alert}: runbook_url {url!r}, not {base}#{alert.lower()}"
        assert anchor in sections, f"{alert}: docs/operations.md has no section #{anchor} (a `### {alert}` heading)"
    for alert, rule in alerts.items():
        used = set(re.findall(r"shopmesh:[a-z_]+:[a-z_0-9]+", rule["expr"]))
        assert used and used <= records, f"{alert}: compares {sorted(used - records) or 'no recording rule'}"
        assert rule.get("labels", {}).get("severity") in ("critical", "warning"), f"{alert}: no severity"
    # Multi-window: each burn alert needs a long and a short window.
    for kind in ("errors", "slow"):
        for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
            assert f"shopmesh:rpc_server_{kind}:ratio_rate{w}" in records, f"no {kind} ratio over {w}"
    infra = [rule["record"] for g in groups for rule in g["rules"] if "rpc_server_call_duration_seconds" in rule.get("expr", "") and "grpc\\\\.health" not in rule["expr"]]
    assert not infra, f"recording rules counting health and reflection calls: {infra}"
    out = promtool_check(groups)
    return f"{len(records)} recording rules, {len(alerts)} alerts; {out}"


def runbook_anchors() -> set[str]:
    """The anchors GitHub gives docs/operations.md's headings (lower case, spaces as dashes,
    punctuation dropped)."""
    anchors = set()
    for line in (ROOT / "docs" / "operations.md").read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


# A metric or recording rule in a dashboard query, with its selector if it has one; label lists
# of `by (...)` / `without (...)` are masked first (they hold label names, not metrics).
DASHBOARD_SERIES = re.compile(r"\b((?:rpc_|shopmesh_|shopmesh:|db_)[a-zA-Z0-9_:]*)(\{[^}]*\})?")


def unfiltered_series(expr: str) -> list[str]:
    """The series a dashboard query reads without `namespace=~"$namespace"`."""
    masked = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)
    return [m.group(0) for m in DASHBOARD_SERIES.finditer(masked) if 'namespace=~"$namespace"' not in (m.group(2) or "")]


def promtool_check(groups: list) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (scripts/check-deploy installs Debian's prometheus)"
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump({"groups": groups}, f)
        f.flush()
        result = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    assert result.returncode == 0, f"promtool check rules: {result.stdout}{result.stderr}"
    return "promtool: " + result.stdout.strip().splitlines()[-1].strip()


def check_dashboards(r: Rendered) -> str:
    maps = [m for m in r.kind("ConfigMap") if "dashboard" in m["metadata"]["name"]]
    if not r.values["grafanaDashboards"]["enabled"]:
        assert not maps, "dashboard ConfigMaps with grafanaDashboards.enabled false"
        return "off"
    files = sorted((CHART_FILES := ROOT / "helm" / "shopmesh" / "files" / "dashboards").glob("*.json"))
    assert len(maps) == len(files) >= 2, f"{len(maps)} dashboard ConfigMaps for {len(files)} dashboards"
    titles = []
    for m in maps:
        for k, v in r.values["grafanaDashboards"]["labels"].items():
            assert m["metadata"]["labels"].get(k) == v, f"{m['metadata']['name']}: no label {k}={v}"
        ((key, text),) = m["data"].items()
        assert json.loads(text) == json.loads((CHART_FILES / key).read_text()), f"{key}: not the file's dashboard"
        d = json.loads(text)
        # Rows only group the panels below them.
        assert all(p.get("targets") for p in d["panels"] if p["type"] != "row"), f"{key}: a panel without queries"
        # One Grafana for several installs: a namespace variable, and every query filtered by it.
        variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
        assert variables.get("namespace", {}).get("includeAll"), f"{key}: no namespace variable (with All)"
        for p in d["panels"]:
            for t in p.get("targets", []):
                unfiltered = unfiltered_series(t["expr"])
                assert not unfiltered, f"{key}: {p['title']} reads {unfiltered} without namespace=~\"$namespace\""
        titles.append(d["title"])
    return ", ".join(titles)


def crd_validate(objects: list[tuple[str, Manifest]]) -> None:
    """Validates custom resources against the committed CRD schemas (deploy/check/crds)."""
    if not objects:
        return
    node = shutil.which("node")
    assert node, "node is not installed (needed for the CRD schemas in deploy/check/crds)"
    assert (CRD_DIR / "node_modules").is_dir(), "deploy/check/crds/node_modules is missing: run `npm ci` there (scripts/check-deploy does)"
    result = subprocess.run([node, str(CRD_DIR / "validate.mjs")], input=json.dumps([o for _, o in objects]), capture_output=True, text=True)
    assert result.returncode == 0, f"validate.mjs: {result.stderr}"
    for (path, obj), errors in zip(objects, json.loads(result.stdout)):
        assert not errors, f"{path}: {obj['kind']}/{obj['metadata']['name']} against its CRD schema: {errors[:3]}"


def check_rules_in_compose(chart: Chart) -> str:
    """docker compose's Prometheus loads the chart's rules (default thresholds) from a file: the same."""
    files = chart.render(values={"prometheusRule": {"enabled": True}, **ONE_OFF}, name=RELEASE, namespace=NAMESPACE)
    (pr,) = [d for p, t in files.items() if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d and d.get("kind") == "PrometheusRule"]
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus-rules.yml").read_text())
    assert compose == {"groups": pr["spec"]["groups"]}, (
        "deploy/compose/prometheus-rules.yml differs from the chart's rules: regenerate it with "
        "`.venv-deploy/bin/python deploy/check/check_chart.py --write-compose-rules`"
    )
    prom = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    assert "/etc/prometheus/rules/*.yml" in prom.get("rule_files", []), "compose's Prometheus loads no rule files"
    return f"{sum(len(g['rules']) for g in compose['groups'])} rules, identical"


def write_compose_rules() -> None:
    chart = Chart.load(CHART)
    files = chart.render(values={"prometheusRule": {"enabled": True}, **ONE_OFF}, name=RELEASE, namespace=NAMESPACE)
    (pr,) = [d for p, t in files.items() if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d and d.get("kind") == "PrometheusRule"]
    header = ("# Generated from the Helm chart's PrometheusRule (default values) by\n"
              "# `.venv-deploy/bin/python deploy/check/check_chart.py --write-compose-rules`; scripts/check-deploy\n"
              "# fails when the two differ. Loaded by compose's Prometheus (deploy/compose/prometheus.yml).\n")
    (ROOT / "deploy" / "compose" / "prometheus-rules.yml").write_text(header + yaml.safe_dump({"groups": pr["spec"]["groups"]}, sort_keys=False, width=200))
    chart.close()


# ---------------------------------------------------------------------------------------------


def run_checks(chart_dir: Path = CHART, validate_schemas: bool = True) -> Checks:
    """Every check of the chart at chart_dir; mutants.py runs them against broken copies."""
    checks = Checks("chart")
    chart = Chart.load(chart_dir)
    Chart_default_policy[0] = chart.merge_values({})["authz"]["policy"]
    production = values_from_yaml((chart_dir / "ci" / "production-values.yaml").read_text())
    versions = kube_versions(chart_dir)

    def lint_clean(values: dict | None, label: str) -> str:
        for version in versions:
            report = lint(str(chart_dir), values, strict=True, kube_version=f"v{version}.0")
            problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
            assert not problems, f"helm lint --strict ({label}, {version}): {problems}"
        return f"Kubernetes {' and '.join(versions)}"

    checks.run("helm lint --strict, default values (a one-off render)", lambda: lint_clean(ONE_OFF, "default values"))
    checks.run("helm lint --strict, ci/production-values.yaml", lambda: lint_clean(production, "production"))
    checks.run("deploy/authz-policy.json: catalog rules", check_shipped_policy)
    checks.run("compose's Prometheus rules are the chart's", lambda: check_rules_in_compose(chart))
    checks.run("the chart's NATS image is compose's", lambda: check_nats_image_is_composes(chart))

    def readme_in_sync() -> str:
        import values_doc
        try:
            fresh = values_doc.table(chart_dir)
        except SystemExit as e:
            raise AssertionError(str(e))
        readme = (chart_dir / "README.md").read_text()
        assert fresh in readme, "helm/shopmesh/README.md's values table is stale: run python3 deploy/check/values_doc.py"
        return f"{fresh.count(chr(10)) - 3} documented keys"

    checks.run("README values table generated from values.yaml", readme_in_sync)

    mtls = {"tls": {"enabled": True}}
    hardened_sidecar = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    # The renderings under test: both values files, and each optional part turned the other way.
    scenarios: dict[str, dict] = {
        "default values": {},
        "ci/production-values.yaml": production,
        "production, every optional part off": merged(production, {
            "networkPolicy": {"enabled": False},
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "grafanaDashboards": {"enabled": False},
            "ingress": {"enabled": False},
            "defaults": {"autoscaling": {"inFlightRequests": {"enabled": False}}},
            "otel": {"endpoint": ""},
        }),
        "default, every optional part on": {
            # The bundled PostgreSQL and the pre-upgrade migration Job, extended like the services.
            "postgresql": {"nodeSelector": {"pool": "db"}, "tolerations": [{"key": "db", "operator": "Exists", "effect": "NoSchedule"}],
                           "podAnnotations": {"backup.example.com/enabled": "true"}, "podLabels": {"example.com/tier": "data"},
                           "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "pg@p.iam.gserviceaccount.com"}},
                           "extraEnv": [{"name": "TZ", "value": "UTC"}], "priorityClassName": "db-high"},
            "migration": {"podAnnotations": {"sidecar.istio.io/inject": "false"}, "nodeSelector": {"pool": "jobs"}},
            "global": {"imageRegistry": "mirror.example.com"},
            "commonLabels": {"example.com/team": "shop", "example.com/cost-center": "42"},
            "networkPolicy": {"metricsScrapers": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                                                   "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]},
            # A caller of another team, certificate from the chart's CA by `shopmesh issue-certificate`.
            "callers": [{"name": "reports", "namespace": "analytics", "serviceAccount": "reports", "podSelector": {"matchLabels": {"app": "reports"}},
                         "methods": ["/shopmesh.order.v1.OrderService/GetOrder", "/shopmesh.order.v1.OrderService/ListOrders", "/shopmesh.catalog.v1.CatalogService/*"]}],
            "prometheusRule": {"latencyThresholdSeconds": 0.5},
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboards": {"enabled": True},
            "defaults": {"autoscaling": {"inFlightRequests": {"enabled": True}}},
            "otel": {"endpoint": "http://otel-collector.observability:4317"},
        },
        # Tokens at the entry point; the services order calls check them when sent.
        "bearer tokens on, optional for order's callees, a rate limit": {
            "jwt": {"jwks": JWKS, "issuer": "https://id.example", "audience": "shopmesh"},
            "defaults": {"limits": {"rateLimitRps": "100", "rateLimitBurst": 200}},
            "services": {"user": {"jwtRequire": "never"}, "payment": {"jwtRequire": "never", "limits": {"rateLimitRps": "0"}}},
        },
        "mTLS (cert-manager CA) and the policy, Ingress and Gateway at the edge": merged(mtls, {
            "tls": {"certManager": {"enabled": True}},
            "ingress": {"enabled": True, "hosts": ["api.example.com"]},
            "gateway": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway"}], "hostnames": ["grpc.example.com"], "presentsMeshCertificate": True},
            "networkPolicy": {"edgeClients": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]},
        }),
        "callers of two other teams, their Certificates from your ClusterIssuer in their namespaces": merged(mtls, {
            "tls": {"certManager": {"enabled": True, "issuerRef": {"kind": "ClusterIssuer", "name": "mesh-ca", "group": "cert-manager.io"}}},
            "callers": [
                {"name": "reports", "namespace": "analytics", "serviceAccount": "reports", "methods": ["/shopmesh.order.v1.OrderService/GetOrder"]},
                {"name": "refunds", "namespace": "support", "serviceAccount": "refund-desk", "podSelector": {"matchLabels": {"app": "refund-desk"}},
                 "methods": ["/shopmesh.order.v1.OrderService/CancelOrder", "/shopmesh.payment.v1.PaymentService/GetPayment", "/shopmesh.user.v1.UserService/GetUser"]},
            ],
        }),
        "mTLS from the chart's CA and one Secret of yours, policy off, another trust domain and probe port": {
            "tls": {"enabled": True, "trustDomain": "shop.example", "probePort": 9000, "certManager": {"enabled": False}, "secretNames": {"payment": "payment-cert"}},
            "authz": {"enabled": False},
        },
        # Tokens without mTLS only where no service calls another (service-to-service calls carry
        # no token): order, the one caller, is left out.
        "no mTLS, order off, Gateway with bearer tokens required": {
            "tls": {"enabled": False},
            "services": {"order": {"enabled": False}},
            "jwt": {"jwks": JWKS, "issuer": "https://id.example", "audience": "shopmesh"},
            "gateway": {"enabled": True, "parentRefs": [{"name": "public"}]},
            "networkPolicy": {"edgeClients": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}]},
        },
        "your CA for the chart's issuer, an Ingress presenting your edge Secret, shorter certificates": {
            "tls": {"chartCA": {"existingSecret": "mesh-ca-of-ours", "duration": "720h"}, "secretNames": {"edge": "edge-cert"}},
            "ingress": {"enabled": True, "hosts": ["api.example.com"]},
            "networkPolicy": {"edgeClients": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]},
        },
        # One service turns the metric off again: a `false` must beat the default's `true`.
        "in-flight metric on, off for payment only": {
            "defaults": {"autoscaling": {"inFlightRequests": {"enabled": True}}},
            "services": {"payment": {"autoscaling": {"inFlightRequests": {"enabled": False}}}},
        },
        "KEDA (in-flight), calls/s for order, no autoscaler for user": {
            "defaults": {"autoscaling": {"keda": {"enabled": True}}},
            "services": {"order": {"autoscaling": {"keda": {"metric": "rate"}}}, "user": {"autoscaling": {"enabled": False, "minReplicas": 3}}},
        },
        # Argo CD and Flux render without a cluster: nothing generated, every render the same.
        "GitOps: your CA and PostgreSQL passwords in existing Secrets, no cluster at render time": {
            "generateSecretsWithoutCluster": False,
            "tls": {"chartCA": {"existingSecret": "mesh-ca"}},
            "postgresql": {"existingSecret": "shopmesh-postgresql-passwords"},
        },
        "GitOps: cert-manager and an external database, no cluster at render time": {
            "generateSecretsWithoutCluster": False,
            "tls": {"certManager": {"enabled": True}},
            "postgresql": {"enabled": False},
            "database": {"existingSecret": "shopmesh-db"},
        },
        # The consumers of the order events, on a broker.
        "events: an external NATS URL (events.url), inventory and notification on": {
            "events": {"url": "nats://shopmesh:secret@nats.messaging:4222"},
            "services": {"inventory": {"enabled": True}, "notification": {"enabled": True}},
        },
        "events: the chart's NATS, one server, inventory and notification on": {
            "nats": {"enabled": True},
            "services": {"inventory": {"enabled": True}, "notification": {"enabled": True}},
        },
        "events: the chart's NATS clustered (3 servers), your password Secret, KEDA on the consumers' lag, metrics scraped": {
            "nats": {"enabled": True, "replicas": 3, "existingSecret": "nats-password", "jetstream": {"size": "20Gi", "storageClass": "fast"}, "metrics": {"enabled": True}},
            "services": {"inventory": {"enabled": True}, "notification": {"enabled": True, "autoscaling": {"keda": {"lagThreshold": "50"}}}},
            "defaults": {"autoscaling": {"keda": {"enabled": True}}},
            "serviceMonitor": {"enabled": True},
            "networkPolicy": {"metricsScrapers": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        },
        "events: an external NATS from your Secret, KEDA reading its monitoring endpoint, two stream replicas": {
            "events": {"existingSecret": "shopmesh-events", "monitoringEndpoint": "nats.messaging.svc:8222", "streamReplicas": 2},
            "services": {"inventory": {"enabled": True}, "notification": {"enabled": True}},
            "defaults": {"autoscaling": {"keda": {"enabled": True}}},
            "networkPolicy": {"events": {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "messaging"}}}], "port": 4222}},
        },
        "GitOps: the chart's NATS with your password Secret, no cluster at render time": {
            "generateSecretsWithoutCluster": False,
            "tls": {"chartCA": {"existingSecret": "mesh-ca"}},
            "postgresql": {"existingSecret": "shopmesh-postgresql-passwords"},
            "nats": {"enabled": True, "existingSecret": "nats-password"},
            "services": {"inventory": {"enabled": True}, "notification": {"enabled": True}},
        },
        # Replicas and failover: the operator's Services -rw and -ro; Secrets made once and kept.
        "CloudNativePG: three instances, one synchronous replica, backups, a PodMonitor, on tainted nodes": {
            "postgresql": {"mode": "cloudnative-pg", "nodeSelector": {"pool": "db"},
                           "tolerations": [{"key": "db", "operator": "Exists", "effect": "NoSchedule"}],
                           "cloudnativepg": {"podMonitor": True, "parameters": {"max_connections": "200"},
                                             "backup": {"barmanObjectStore": {"destinationPath": "s3://backups/shopmesh", "s3Credentials": {"inheritFromIAMRole": True}},
                                                        "retentionPolicy": "30d"}}},
        },
        "GitOps: CloudNativePG, asynchronous, your role Secrets, no cluster at render time": {
            "generateSecretsWithoutCluster": False,
            "tls": {"chartCA": {"existingSecret": "mesh-ca"}},
            "postgresql": {"mode": "cloudnative-pg", "existingSecret": "shopmesh-roles", "cloudnativepg": {"instances": 2, "synchronous": {"number": 0}}},
        },
        # OpenShift's restricted SCC assigns a uid and an fsGroup from the namespace's range.
        "OpenShift: uid, gid and fsGroup left to the platform": {
            "defaults": {"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}},
            "postgresql": {"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}},
        },
        "security contexts tightened per service within the restricted standard": {
            "defaults": {"podSecurityContext": {"supplementalGroups": [4000], "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/shopmesh.json"}}},
            "services": {"payment": {"securityContext": {"runAsUser": 70000, "runAsGroup": 70000}}},
        },
        "external database, every extension point, names overridden": {
            "postgresql": {"enabled": False},
            "database": {"existingSecret": "shopmesh-db", "waitTimeoutSeconds": 60},
            "defaults": {
                "podAnnotations": {"example.com/team": "shop"},
                "podLabels": {"example.com/tier": "backend", "app.kubernetes.io/component": "hijack"},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "shop", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
                "priorityClassName": "shop-high",
                "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/shopmesh"}},
                "extraEnv": [{"name": "SHOPMESH_PAYMENT_LIMIT_MINOR", "valueFrom": {"secretKeyRef": {"name": "limits", "key": "payment"}}}],
                "envFrom": [{"configMapRef": {"name": "shop-settings"}}],
                "extraVolumes": [{"name": "cloudsql", "emptyDir": {}}],
                "extraVolumeMounts": [{"name": "cloudsql", "mountPath": "/cloudsql"}],
                "extraContainers": [{"name": "cloud-sql-proxy", "image": "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.14.0", "args": ["--unix-socket=/cloudsql", "proj:region:db"],
                                     "securityContext": hardened_sidecar, "volumeMounts": [{"name": "cloudsql", "mountPath": "/cloudsql"}]}],
                "initContainers": [{"name": "wait", "image": "busybox:1.36", "command": ["true"], "securityContext": hardened_sidecar}],
            },
            "services": {"order": {"topologySpreadConstraints": [], "podAnnotations": {"example.com/entry": "yes"}}},
            "nameOverride": "mesh",
            "fullnameOverride": "shopmesh",
        },
    }
    rendered: dict[str, Rendered] = {}
    for label, values in scenarios.items():
        def do_render(label: str = label, values: dict = values) -> str:
            r = Rendered(chart, values)
            r.values = chart.merge_values(merged(ONE_OFF, values))
            rendered[label] = r
            return f"{len(r.objects)} objects"

        checks.run(f"render: {label}", do_render)

    def validate(r: Rendered) -> str:
        custom = []
        for path, obj in r.objects:
            if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
                custom.append((path, obj))
                continue
            for version in versions:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = ".".join(str(p) for p in e.path)
                    raise AssertionError(f"{path}: {obj['kind']}/{obj['metadata']['name']} against {version}: {where}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    raise AssertionError(f"{path}: {e.message} (a CRD kind? list it in CRD_KINDS, with its schema in deploy/check/crds)")
        crd_validate(custom)
        kinds = sorted({o["kind"] for _, o in custom})
        return f"{len(r.objects) - len(custom)} objects against {' and '.join(versions)}" + (
            f"; {len(custom)} custom resources against their CRD schemas ({', '.join(kinds)})" if custom else ""
        )

    for label, r in rendered.items():
        if validate_schemas:
            checks.run(f"schemas: {label}", lambda r=r: validate(r))

    for label, r in rendered.items():
        for svc in services_of(r):
            checks.run(f"intent [{label}]: {svc} service", lambda r=r, svc=svc: check_service(r, svc))
        for check in (check_autoscaler, check_upstreams, check_migration, check_test_pod, check_secret, check_postgresql, check_otel,
                      check_network_policy, check_events, check_callers_admitted, check_service_monitor, check_in_flight_metric, check_jwt, check_limits,
                      check_tls, check_file_access, check_deterministic, check_authz, check_edge, check_extension_points, check_workload_extensions, check_values_honoured, check_security_contexts, check_prometheus_rule, check_dashboards):
            checks.run(f"intent [{label}]: {check.__name__.removeprefix('check_').replace('_', ' ')}", lambda r=r, c=check: c(r))

    # Values the chart must refuse, and the message it must refuse them with.
    def refused(values: dict, message: str) -> str:
        try:
            chart.render(values=merged(ONE_OFF, values), name=RELEASE, namespace=NAMESPACE)
        except HelmError as e:
            text = re.sub(r"\s+", " ", str(e))
            assert message in text, f"refused, but without {message!r}: {text}"
            return "refused: " + text[text.index(message):][:110]
        raise AssertionError(f"rendered although it should fail with {message!r}")

    refusals = {
        "grace period shorter than drain + shutdown + flush": (
            {"defaults": {"lifecycle": {"terminationGracePeriodSeconds": 17}}},
            "lifecycle.terminationGracePeriodSeconds is 17 but must be at least",
        ),
        "one service's shutdown timeout beyond its grace period": (
            {"services": {"order": {"lifecycle": {"shutdownTimeoutSeconds": 30}}}},
            "services.order: lifecycle.terminationGracePeriodSeconds",
        ),
        "minReplicas above maxReplicas": (
            {"services": {"user": {"autoscaling": {"minReplicas": 6}}}},
            "autoscaling.minReplicas (6) is above maxReplicas",
        ),
        "CloudNativePG with as many synchronous replicas as instances": (
            {"postgresql": {"mode": "cloudnative-pg", "cloudnativepg": {"instances": 2, "synchronous": {"number": 2}}}},
            "postgresql.cloudnativepg.synchronous.number (2) must be below instances (2)",
        ),
        "CloudNativePG rendered without a cluster, passwords generated": (
            {"generateSecretsWithoutCluster": False, "tls": {"chartCA": {"existingSecret": "ca"}}, "postgresql": {"mode": "cloudnative-pg"}},
            "cloudnative-pg: a base name B, with a kubernetes.io/basic-auth Secret B-<service>",
        ),
        "an events consumer without a broker": (
            {"services": {"notification": {"enabled": True}}},
            "services.notification is enabled but events.url is none and nats.enabled is false: it consumes the order events from NATS JetStream. Set nats.enabled=true",
        ),
        "inventory without a broker": ({"services": {"inventory": {"enabled": True}}}, "services.inventory is enabled but events.url is none"),
        "the chart's NATS and an external URL at once": (
            {"nats": {"enabled": True}, "events": {"url": "nats://nats.messaging:4222"}},
            "nats.enabled and events.url are set together: the services use one broker",
        ),
        "an external URL and a URL Secret at once": (
            {"events": {"url": "nats://nats.messaging:4222", "existingSecret": "events"}},
            "events.existingSecret and events.url are set together",
        ),
        "more stream replicas than NATS servers": (
            {"nats": {"enabled": True, "replicas": 3}, "events": {"streamReplicas": 5}},
            "events.streamReplicas (5) is above nats.replicas (3)",
        ),
        "an even NATS cluster (schema)": ({"nats": {"enabled": True, "replicas": 2}}, "/nats/replicas"),
        "an events URL that is not NATS (schema)": ({"events": {"url": "kafka://broker:9092"}}, "/events/url"),
        "the chart's NATS rendered without a cluster, password generated": (
            {"generateSecretsWithoutCluster": False, "tls": {"chartCA": {"existingSecret": "ca"}}, "postgresql": {"existingSecret": "pw"}, "nats": {"enabled": True}},
            "Set nats.existingSecret (key password)",
        ),
        "an unknown PostgreSQL mode (schema)": ({"postgresql": {"mode": "patroni"}}, "/postgresql/mode"),
        "a misspelt key (schema)": ({"services": {"user": {"autoscalling": {}}}}, "autoscalling"),
        "an env variable the chart sets itself (schema)": (
            {"defaults": {"env": {"SHOPMESH_DB_MIGRATE": "true"}}},
            "SHOPMESH_DB_MIGRATE",
        ),
        "a callee URL set through extraEnv (schema)": (
            {"services": {"order": {"extraEnv": [{"name": "SHOPMESH_CATALOG_URL", "value": "http://x"}]}}},
            "/services/order/extraEnv/0/name",
        ),
        "bearer tokens without an issuer": (
            {"jwt": {"jwks": JWKS, "audience": "shopmesh"}},
            "jwt.issuer is required when jwt.jwks is set",
        ),
        "a key set that is not a JWKS": ({"jwt": {"jwks": "[1, 2]", "issuer": "i", "audience": "a"}}, "jwt.jwks must be a JSON Web Key Set"),
        "a bearer-token variable set through env (schema)": (
            {"defaults": {"env": {"SHOPMESH_JWT_REQUIRE": "never"}}},
            "SHOPMESH_JWT_REQUIRE",
        ),
        "neither the bundled PostgreSQL nor an existing Secret": (
            {"postgresql": {"enabled": False}},
            "no database: set postgresql.enabled=true (the chart deploys PostgreSQL) or database.existingSecret=",
        ),
        "the old fixed-password URLs (schema)": ({"database": {"urls": {"user": "postgres://u:u@h/db"}}}, "urls"),
        "an authorization policy without mTLS": ({"authz": {"enabled": True}, "tls": {"enabled": False}}, "authz.enabled needs mTLS"),
        "a policy rule naming no SPIFFE caller (schema)": (
            {"authz": {"policy": {"rules": [{"callers": ["order"], "methods": ["/a.B/C"]}]}}},
            "/authz/policy/rules/0/callers/0",
        ),
        "an Ingress to services without mTLS or required tokens": (
            {"ingress": {"enabled": True}, "tls": {"enabled": False}},
            "mTLS off: the edge would reach the catalog service, whose callers would have neither an mTLS identity nor a required bearer token",
        ),
        "a Gateway reaching a service whose token is optional": (
            {"gateway": {"enabled": True, "parentRefs": [{"name": "gw"}]}, "jwt": {"jwks": JWKS, "issuer": "i", "audience": "a"}, "tls": {"enabled": False},
             "services": {"user": {"jwtRequire": "never"}}},
            "the edge would reach the user service",
        ),
        "a Gateway that presents no mesh certificate to mTLS services": (
            {"tls": {"enabled": True}, "gateway": {"enabled": True, "parentRefs": [{"name": "gw"}]}},
            "gateway.enabled with mTLS on: the services accept only callers with a mesh certificate",
        ),
        "an edge with mTLS on but the policy off": (
            {"tls": {"enabled": True, "certManager": {"enabled": True}}, "authz": {"enabled": False}, "ingress": {"enabled": True}},
            "turn the authorization policy on",
        ),
        "an edge with the chart's own CA but no Secret for the edge's certificate": (
            {"ingress": {"enabled": True}},
            "the edge needs a mesh certificate in a Secret (SPIFFE ID spiffe://cluster.local/ns/shop/sa/shopmesh-gateway), which Helm cannot write",
        ),
        "a certificate lifetime in days (schema)": ({"tls": {"chartCA": {"duration": "365d"}}}, "/tls/chartCA/duration"),
        "bearer tokens without mTLS where services call each other": (
            {"tls": {"enabled": False}, "jwt": {"jwks": JWKS, "issuer": "i", "audience": "a"}},
            "service-to-service calls (order -> user, order -> payment, order -> catalog) carry no token and need mTLS. Set tls.enabled=true",
        ),
        "bearer tokens without mTLS, the callees' tokens optional (a writable catalog)": (
            {"tls": {"enabled": False}, "jwt": {"jwks": JWKS, "issuer": "i", "audience": "a"},
             "services": {"catalog": {"jwtRequire": "never"}, "user": {"jwtRequire": "never"}, "payment": {"jwtRequire": "never"}}},
            "jwt.jwks is set with tls.enabled=false",
        ),
        "a render without a cluster that would generate the CA and passwords (GitOps)": (
            {"generateSecretsWithoutCluster": False},
            "rendered without a cluster (helm template, Argo CD, --dry-run=client): lookup finds nothing, so the mesh CA and the database passwords would be generated anew on every render",
        ),
        "a render without a cluster that would generate the CA": (
            {"generateSecretsWithoutCluster": False, "postgresql": {"existingSecret": "pw"}},
            "Set tls.chartCA.existingSecret (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt; or tls.certManager.enabled=true); or, for a one-off render",
        ),
        "a latency objective that is no bucket of the histogram": (
            {"prometheusRule": {"enabled": True, "latencyThresholdSeconds": 0.3}},
            "prometheusRule.latencyThresholdSeconds is 0.3, not a bucket bound of the call-duration histogram: the latency alerts would compare a series that does not exist and never fire. Set one of 0.00025, 0.0005,",
        ),
        "a service the binary does not serve (schema)": ({"services": {"shipping": {"port": 50057}}}, "additional properties 'shipping' not allowed"),
        "the catalog disabled while order calls it": (
            {"services": {"catalog": {"enabled": False}}},
            "services.order.calls names catalog, but services.catalog.enabled is false: order would call 127.0.0.1, where nothing serves catalog. Set services.catalog.enabled=true",
        ),
        "payment disabled while order calls it": ({"services": {"payment": {"enabled": False}}}, "services.order.calls names payment, but services.payment.enabled is false"),
        # (`resources: {}` merges with the chart's requests; null is how Helm removes a key.)
        "a CPU autoscaler without a CPU request": (
            {"defaults": {"resources": {"requests": {"cpu": None}}}},
            "the autoscaler scales on CPU utilisation, a share of the CPU request, and there is none: set resources.requests.cpu",
        ),
        "ServiceMonitors that NetworkPolicies keep from scraping": (
            {"serviceMonitor": {"enabled": True}},
            "nothing may reach the metrics port 9464, so Prometheus would scrape nothing. Set networkPolicy.metricsScrapers",
        ),
        "a pod that may run as root (schema)": ({"defaults": {"podSecurityContext": {"runAsNonRoot": False}}}, "/defaults/podSecurityContext/runAsNonRoot"),
        "uid 0 (schema)": ({"defaults": {"podSecurityContext": {"runAsUser": 0}}}, "/defaults/podSecurityContext/runAsUser"),
        "a privileged container (schema)": ({"services": {"user": {"securityContext": {"privileged": True}}}}, "/services/user/securityContext/privileged"),
        "an added capability beyond NET_BIND_SERVICE (schema)": (
            {"defaults": {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}}, "/defaults/securityContext/capabilities/add/0",
        ),
        "an unconfined seccomp profile (schema)": ({"postgresql": {"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}}}, "/postgresql/podSecurityContext/seccompProfile/type"),
        "privilege escalation for the migration Job (schema)": ({"migration": {"securityContext": {"allowPrivilegeEscalation": True}}}, "/migration/securityContext/allowPrivilegeEscalation"),
        "a service calling one that does not exist": ({"services": {"order": {"calls": ["inventory"]}}}, "services.order.calls names inventory"),
        "a caller with a method of a disabled service": (
            {"services": {"catalog": {"enabled": False}, "order": {"calls": ["user", "payment"]}},
             "callers": [{"name": "reports", "namespace": "analytics", "serviceAccount": "reports", "methods": ["/shopmesh.catalog.v1.CatalogService/*"]}]},
            "callers: reports may call /shopmesh.catalog.v1.CatalogService/*, but shopmesh.catalog.v1.CatalogService is not a service of this release",
        ),
        "a caller listed twice": (
            {"callers": [{"name": "reports", "namespace": "a", "serviceAccount": "r", "methods": ["/shopmesh.order.v1.OrderService/GetOrder"]},
                         {"name": "reports", "namespace": "b", "serviceAccount": "r", "methods": ["/shopmesh.order.v1.OrderService/GetOrder"]}]},
            "callers: reports is listed twice",
        ),
        "a caller's method that is not a gRPC path (schema)": (
            {"callers": [{"name": "reports", "namespace": "a", "serviceAccount": "r", "methods": ["OrderService.GetOrder"]}]},
            "/callers/0/methods/0",
        ),
    }
    for label, (values, message) in refusals.items():
        checks.run(f"refuses {label}", lambda v=values, m=message: refused(v, m))

    chart.close()
    return checks


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-compose-rules"]:
        write_compose_rules()
        sys.exit(0)
    sys.exit(run_checks().finish())
