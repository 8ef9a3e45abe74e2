"""Checks of helm/shopmesh with no cluster: Helm's lint, rendering by Helm's own Go SDK
(helm-python-sdk), strict validation of every rendered object against Kubernetes' schemas
(kubernetes-validate), and tests of what the chart is meant to guarantee.

Run by scripts/check-deploy, which makes the virtual environment this needs.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from helm_python.chart import Chart, lint, values_from_yaml
from helm_python.errors import HelmError

from harness import Checks

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shopmesh"
RELEASE, NAMESPACE = "shopmesh", "shop"

# The three services: gRPC port and the gRPC service (= readiness health name).
SERVICES = {
    "user": (50051, "shopmesh.user.v1.UserService"),
    "order": (50052, "shopmesh.order.v1.OrderService"),
    "payment": (50053, "shopmesh.payment.v1.PaymentService"),
}
# Kinds from CRDs: kubernetes-validate has Kubernetes' own schemas only. The intent tests below
# check these objects instead. Any other kind without a schema fails the validation.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# The grace period must cover drain + shutdown + this (telemetry flush ~2 s, exit 1 s).
GRACE_MARGIN_SECONDS = 3

Manifest = dict[str, Any]


def kube_versions(chart_dir: Path) -> list[str]:
    """The oldest version Chart.yaml accepts and the newest kubernetes-validate knows."""
    constraint = yaml.safe_load((chart_dir / "Chart.yaml").read_text())["kubeVersion"]
    oldest = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", constraint)
    assert oldest, f"kubeVersion {constraint!r} is not of the form >=X.Y.Z-0"
    newest = kubernetes_validate.utils.latest_version()
    return [oldest.group(1), ".".join(newest.split(".")[:2])]


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
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
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


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)s", duration)
    assert m, f"duration {duration!r} is not whole seconds"
    return int(m.group(1))


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------------------------
# Intent: what every rendering must guarantee, for each service.


def check_hardened(pod: Manifest, what: str) -> None:
    psc = pod.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, f"{what}: pod securityContext.runAsNonRoot is not true"
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{what}: pod seccompProfile is not RuntimeDefault"
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, f"{what}/{c['name']}: allowPrivilegeEscalation is not false"
        assert sc.get("readOnlyRootFilesystem") is True, f"{what}/{c['name']}: readOnlyRootFilesystem is not true"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{what}/{c['name']}: capabilities do not drop ALL"
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{what}/{c['name']}: may run as root"
        assert "privileged" not in sc or sc["privileged"] is False, f"{what}/{c['name']}: privileged"


def check_service(r: Rendered, svc: str) -> str:
    port, grpc_name = SERVICES[svc]
    deploy = r.one("Deployment", name(svc))
    pod = deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selects(selector, labels), f"{svc}: the Deployment's selector does not match its pods"
    assert "replicas" not in deploy["spec"], f"{svc}: the Deployment sets replicas, which the HPA owns"
    (container,) = pod["containers"]
    assert container["args"] == ["serve", svc], f"{svc}: container args are {container['args']}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.get("grpc") == port, f"{svc}: grpc containerPort is {ports.get('grpc')}, not {port}"
    env = env_of(container)
    assert env.get(f"SHOPMESH_{svc.upper()}_LISTEN") == f"0.0.0.0:{port}", f"{svc}: listen address does not match port {port}"
    assert env.get("SHOPMESH_METRICS_LISTEN") == f"0.0.0.0:{ports.get('metrics')}", f"{svc}: metrics listen address does not match the metrics port"
    assert env.get("SHOPMESH_DB_MIGRATE") == "false", f"{svc}: SHOPMESH_DB_MIGRATE is not false (the hook Job migrates)"
    db = env.get(f"SHOPMESH_{svc.upper()}_DATABASE_URL")
    assert isinstance(db, dict) and db["secretKeyRef"]["key"] == f"{svc}-database-url", f"{svc}: database URL is not its own key of a Secret"
    others = [k for k in env if k.endswith("_DATABASE_URL") and k != f"SHOPMESH_{svc.upper()}_DATABASE_URL"]
    assert not others, f"{svc}: the pod sees other services' database URLs: {others}"

    # Probes: native gRPC on the service's port (on the plaintext probe port when the gRPC port
    # requires mTLS, which the kubelet cannot speak); liveness/startup ask "liveness", readiness
    # its own name.
    probe_port = r.values["tls"]["probePort"] if r.values["tls"]["enabled"] else port
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
    keys = {t["topologyKey"] for t in pod.get("topologySpreadConstraints", [])}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys, f"{svc}: not spread over zones and nodes: {keys}"
    for t in pod["topologySpreadConstraints"]:
        assert selects(t["labelSelector"]["matchLabels"], labels), f"{svc}: a topology spread constraint selects other pods"

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

    hpas = [h for h in r.kind("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name(svc)]
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

    pdbs = [p for p in r.kind("PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], labels)]
    assert len(pdbs) == 1, f"{svc}: {len(pdbs)} PodDisruptionBudgets select its pods"
    assert pdbs[0]["spec"]["selector"]["matchLabels"] == selector, f"{svc}: the PDB's selector is not the Deployment's"
    return f"{grace}s grace >= {drain}s + {shutdown}s + {GRACE_MARGIN_SECONDS}s"


def check_order_upstreams(r: Rendered) -> str:
    env = env_of(r.one("Deployment", name("order"))["spec"]["template"]["spec"]["containers"][0])
    for callee, var in (("user", "SHOPMESH_USER_URL"), ("payment", "SHOPMESH_PAYMENT_URL")):
        want = f"http://{headless(callee)}.{NAMESPACE}.svc.cluster.local:{SERVICES[callee][0]}"
        assert env.get(var) == want, f"order: {var} is {env.get(var)!r}, not the headless Service {want!r}"
        r.one("Service", headless(callee))
    return "user and payment by headless names"


def check_migration(r: Rendered) -> str:
    job = r.one("Job", f"{RELEASE}-migrate")
    ann = job["metadata"].get("annotations", {})
    assert set(ann.get("helm.sh/hook", "").split(",")) == {"pre-install", "pre-upgrade"}, f"migrate Job hook is {ann.get('helm.sh/hook')!r}"
    assert "before-hook-creation" in ann.get("helm.sh/hook-delete-policy", ""), "migrate Job is not replaced on the next run"
    pod = job["spec"]["template"]["spec"]
    check_hardened(pod, "migrate Job")
    assert pod.get("automountServiceAccountToken") is False, "migrate Job mounts a ServiceAccount token"
    args = sorted(tuple(c["args"]) for c in pod["containers"])
    assert args == sorted(("migrate", s) for s in SERVICES), f"migrate Job runs {args}"
    existing = r.values.get("database", {}).get("existingSecret")
    for c in pod["containers"]:
        svc = c["args"][1]
        ref = env_of(c)[f"SHOPMESH_{svc.upper()}_DATABASE_URL"]["secretKeyRef"]
        if existing:
            assert ref["name"] == existing, f"migrate/{svc} reads Secret {ref['name']}, not the existing {existing}"
        else:
            # On a first install pre-install hooks run before the release's Secret exists: the
            # Secret the Job reads must be a hook of the same events, created before it.
            secret = r.one("Secret", ref["name"])
            sann = secret["metadata"].get("annotations", {})
            assert set(sann.get("helm.sh/hook", "").split(",")) >= {"pre-install", "pre-upgrade"}, (
                f"migrate/{svc} reads Secret {ref['name']}, which is not a pre-install/pre-upgrade hook"
            )
            assert int(sann.get("helm.sh/hook-weight", 0)) < int(ann.get("helm.sh/hook-weight", 0)), (
                f"Secret {ref['name']} is not created before the migrate Job (hook weight)"
            )
            assert f"{svc}-database-url" in secret["data"], f"Secret {ref['name']} has no {svc}-database-url"
    return "pre-install,pre-upgrade, " + ("existing Secret" if existing else "hook Secret created first")


def check_test_pod(r: Rendered) -> str:
    pods = [p for p in r.kind("Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(pods) == 1, f"{len(pods)} helm test pods"
    pod = pods[0]["spec"]
    check_hardened(pod, "helm test pod")
    assert pod.get("restartPolicy") == "Never", "helm test pod restarts"
    got = sorted(c["args"] for c in pod["containers"])
    tls = r.values["tls"]
    want = sorted(
        ["healthcheck", f"{headless(s)}.{NAMESPACE}.svc.cluster.local:{tls['probePort'] if tls['enabled'] else port}", grpc]
        for s, (port, grpc) in SERVICES.items()
    )
    assert got == want, f"helm test pod runs {got}, expected {want}"
    return "shopmesh healthcheck per service"


def check_secret(r: Rendered) -> str:
    existing = r.values.get("database", {}).get("existingSecret")
    deployments = [r.one("Deployment", name(s)) for s in SERVICES]
    refs = {
        env_of(d["spec"]["template"]["spec"]["containers"][0])[f"SHOPMESH_{s.upper()}_DATABASE_URL"]["secretKeyRef"]["name"]
        for s, d in zip(SERVICES, deployments)
    }
    if existing:
        assert refs == {existing}, f"Deployments read Secrets {refs}, not {existing}"
        assert not r.kind("Secret"), f"the chart creates Secrets although database.existingSecret is set: {[s['metadata']['name'] for s in r.kind('Secret')]}"
        return f"existing Secret {existing}, none created"
    (ref,) = refs
    secret = r.one("Secret", ref)
    assert "helm.sh/hook" not in secret["metadata"].get("annotations", {}), "the Deployments' Secret is a hook (it would outlive the release)"
    assert set(secret["data"]) == {f"{s}-database-url" for s in SERVICES}, f"Secret keys are {sorted(secret['data'])}"
    for d in deployments:
        ann = d["spec"]["template"]["metadata"].get("annotations", {})
        assert "checksum/database" in ann, f"{d['metadata']['name']}: pods do not roll when the database Secret changes"
    return f"Secret {ref} created, pods carry its checksum"


def check_otel(r: Rendered) -> str:
    endpoint = r.values.get("otel", {}).get("endpoint")
    for svc in SERVICES:
        env = env_of(r.one("Deployment", name(svc))["spec"]["template"]["spec"]["containers"][0])
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
    if not r.values.get("networkPolicy", {}).get("enabled"):
        assert not policies, "NetworkPolicies rendered with networkPolicy.enabled false"
        return "off: none rendered"
    assert len(policies) == len(SERVICES), f"{len(policies)} NetworkPolicies for {len(SERVICES)} services"
    pod_labels = {s: r.one("Deployment", name(s))["spec"]["template"]["metadata"]["labels"] for s in SERVICES}

    def policy_of(svc: str) -> Manifest:
        (p,) = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], pod_labels[svc])]
        assert set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}, f"{svc}: policy does not isolate both directions"
        return p

    for callee in ("user", "payment"):
        port = SERVICES[callee][0]
        rules = [rule for rule in policy_of(callee)["spec"]["ingress"] if any(p["port"] == port for p in rule.get("ports", []))]
        peers = [peer for rule in rules for peer in rule.get("from", [{}])]
        services_allowed = {
            s for s in SERVICES for peer in peers if "podSelector" in peer and selects(peer["podSelector"]["matchLabels"], pod_labels[s])
        }
        assert services_allowed == {"order"}, f"{callee}: gRPC port {port} is open to {sorted(services_allowed) or 'no service'}, not only order"
        assert all("podSelector" in p or p in r.values["networkPolicy"].get("probeSources", []) for p in peers), (
            f"{callee}: gRPC port {port} is open to peers outside the release: {peers}"
        )
    egress = policy_of("order")["spec"]["egress"]
    for callee in ("user", "payment"):
        port = SERVICES[callee][0]
        assert any(
            any(p["port"] == port for p in rule.get("ports", []))
            and any(selects(peer.get("podSelector", {}).get("matchLabels", {"-": "-"}), pod_labels[callee]) for peer in rule.get("to", []))
            for rule in egress
        ), f"order may not call {callee} on {port}"
    for svc in ("user", "payment"):
        for rule in policy_of(svc)["spec"]["egress"]:
            for peer in rule.get("to", []):
                for other in SERVICES:
                    if other != svc and "podSelector" in peer:
                        assert not selects(peer["podSelector"]["matchLabels"], pod_labels[other]), f"{svc} may call {other}"
    return "on: user and payment take gRPC from order only"


def check_service_monitor(r: Rendered) -> str:
    monitors = r.kind("ServiceMonitor")
    sm = r.values.get("serviceMonitor", {})
    if not sm.get("enabled"):
        assert not monitors, "ServiceMonitors rendered with serviceMonitor.enabled false"
        return "off: none rendered"
    assert len(monitors) == len(SERVICES), f"{len(monitors)} ServiceMonitors for {len(SERVICES)} services"
    for svc in SERVICES:
        service = r.one("Service", headless(svc))
        matching = [m for m in monitors if selects(m["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])]
        assert len(matching) == 1, f"{svc}: {len(matching)} ServiceMonitors select its Service"
        (endpoint,) = matching[0]["spec"]["endpoints"]
        assert endpoint["port"] == "metrics" and endpoint.get("path") == "/metrics", f"{svc}: ServiceMonitor scrapes {endpoint}"
        assert any(p["name"] == "metrics" for p in service["spec"]["ports"]), f"{svc}: its Service has no metrics port"
        for k, v in sm.get("labels", {}).items():
            assert matching[0]["metadata"]["labels"].get(k) == v, f"{svc}: ServiceMonitor lacks label {k}={v}"
    return "on: one per service, port metrics"


TLS_ENV = ("SHOPMESH_TLS_CERT", "SHOPMESH_TLS_KEY", "SHOPMESH_TLS_CA", "SHOPMESH_PROBE_LISTEN")


def check_tls(r: Rendered) -> str:
    tls = r.values["tls"]
    for svc in SERVICES:
        pod = r.one("Deployment", name(svc))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = env_of(container)
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if not tls["enabled"]:
            assert not [k for k in TLS_ENV if k in env], f"{svc}: TLS settings with tls.enabled false"
            assert "probe" not in ports, f"{svc}: a probe port with tls.enabled false"
            assert not [v for v in volumes.values() if "secret" in v], f"{svc}: a Secret volume with tls.enabled false"
            continue
        # Each file must lie in a read-only mount of this service's own Secret.
        for var, key in (("SHOPMESH_TLS_CERT", "tls.crt"), ("SHOPMESH_TLS_KEY", "tls.key"), ("SHOPMESH_TLS_CA", "ca.crt")):
            path = env.get(var)
            assert isinstance(path, str) and path.endswith("/" + key), f"{svc}: {var} is {path!r}, not a {key}"
            mount = mounts.get(path.rsplit("/", 1)[0])
            assert mount and mount.get("readOnly") is True, f"{svc}: {var} {path} is not in a read-only mount"
            secret = volumes[mount["name"]].get("secret", {})
            want = tls["secretNames"].get(svc) or f"{name(svc)}-tls"
            assert secret.get("secretName") == want, f"{svc}: {var} comes from Secret {secret.get('secretName')!r}, not {want!r}"
            assert secret.get("defaultMode", 0o644) & 0o077 == 0, f"{svc}: the TLS Secret's files are readable by others"
        assert env.get("SHOPMESH_TRUST_DOMAIN") == tls["trustDomain"], f"{svc}: trust domain is {env.get('SHOPMESH_TRUST_DOMAIN')!r}"
        assert env.get("SHOPMESH_PROBE_LISTEN") == f"0.0.0.0:{tls['probePort']}", f"{svc}: probe port listens on {env.get('SHOPMESH_PROBE_LISTEN')!r}"
        assert ports.get("probe") == tls["probePort"] != ports.get("grpc"), f"{svc}: probe port {ports.get('probe')} is not a port of its own"
    return f"on: own Secret per service, probes on {tls['probePort']}" if tls["enabled"] else "off: no TLS settings"


def shipped_policy_rules(namespace: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """deploy/authz-policy.json (written for namespace default) as (callers, methods) pairs."""
    text = (ROOT / "deploy" / "authz-policy.json").read_text().replace("/ns/default/", f"/ns/{namespace}/")
    return [(tuple(rule["callers"]), tuple(rule["methods"])) for rule in json.loads(text)["rules"]]


def check_authz(r: Rendered) -> str:
    maps = [c for c in r.kind("ConfigMap") if c["metadata"]["name"] == f"{RELEASE}-authz-policy"]
    if not r.values["authz"]["enabled"]:
        assert not maps, "authz policy ConfigMap rendered with authz.enabled false"
        for svc in SERVICES:
            env = env_of(r.one("Deployment", name(svc))["spec"]["template"]["spec"]["containers"][0])
            assert "SHOPMESH_AUTHZ_POLICY" not in env, f"{svc}: a policy with authz.enabled false"
        return "off: no policy"
    (cm,) = maps
    policy = json.loads(cm["data"]["policy.json"])
    got = [(tuple(rule["callers"]), tuple(rule["methods"])) for rule in policy["rules"]]
    # The chart's default policy is the shipped file, in the release's namespace.
    if r.values["authz"]["policy"] == Chart_default_policy[0]:
        assert got == shipped_policy_rules(NAMESPACE), f"the chart's policy differs from deploy/authz-policy.json:\n{got}"
    charge = [callers for callers, methods in got if "/shopmesh.payment.v1.PaymentService/Charge" in methods]
    assert charge == [(f"spiffe://{r.values['tls']['trustDomain']}/ns/{NAMESPACE}/sa/{name('order')}",)], f"Charge may be called by {charge}"
    for svc in SERVICES:
        deploy = r.one("Deployment", name(svc))
        pod = deploy["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        path = env_of(container).get("SHOPMESH_AUTHZ_POLICY")
        assert isinstance(path, str) and path.endswith("/policy.json"), f"{svc}: SHOPMESH_AUTHZ_POLICY is {path!r}"
        mount = {m["mountPath"]: m for m in container.get("volumeMounts", [])}.get(path.rsplit("/", 1)[0])
        assert mount and mount.get("readOnly") is True, f"{svc}: the policy {path} is not in a read-only mount"
        volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
        assert volume.get("configMap", {}).get("name") == cm["metadata"]["name"], f"{svc}: the policy mount is not the policy ConfigMap"
        ann = deploy["spec"]["template"]["metadata"].get("annotations", {})
        assert "checksum/authz-policy" in ann, f"{svc}: pods do not roll when the policy changes"
    return f"on: {len(got)} rules, mounted in every service"


# The chart's default authz.policy, filled in by run_checks (compared to the shipped file).
Chart_default_policy: list[dict] = [{}]


def check_in_flight_metric(r: Rendered) -> str:
    defaults = r.values["defaults"]["autoscaling"]
    states = []
    for svc in SERVICES:
        settings = merged(defaults, r.values["services"][svc].get("autoscaling", {}))["inFlightRequests"]
        hpa = r.one("HorizontalPodAutoscaler", name(svc))
        pods = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        if settings["enabled"]:
            assert len(pods) == 1, f"{svc}: in-flight metric enabled but the HPA has {len(pods)} Pods metrics"
            assert pods[0]["pods"]["metric"]["name"] == settings["metricName"], f"{svc}: HPA uses metric {pods[0]['pods']['metric']['name']}"
            assert pods[0]["pods"]["target"]["type"] == "AverageValue", f"{svc}: in-flight target is not a per-pod average"
        else:
            assert not pods, f"{svc}: in-flight metric disabled but the HPA has a Pods metric"
        states.append(f"{svc} {'on' if settings['enabled'] else 'off'}")
    return ", ".join(states)


# A JSON Web Key Set with one public Ed25519 key, for the renderings with bearer tokens on.
JWKS = '{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'
JWKS_DIR = "/etc/shopmesh/jwt"


def check_jwt(r: Rendered) -> str:
    jwt = r.values.get("jwt", {})
    maps = [m for m in r.kind("ConfigMap") if m["metadata"]["name"] == f"{RELEASE}-jwks"]
    for svc in SERVICES:
        pod_template = r.one("Deployment", name(svc))["spec"]["template"]
        pod = pod_template["spec"]
        container = pod["containers"][0]
        env = env_of(container)
        jwt_env = {k: v for k, v in env.items() if k.startswith("SHOPMESH_JWT_")}
        if not jwt.get("jwks"):
            assert not jwt_env, f"{svc}: bearer-token variables set with no jwt.jwks: {sorted(jwt_env)}"
            # Other volumes (mTLS certificates, the policy) may be there; the key set may not.
            jwt_mounts = [m for m in container.get("volumeMounts", []) if m.get("mountPath") == JWKS_DIR]
            jwt_volumes = [v for v in pod.get("volumes", []) if v.get("name") == "jwt"]
            assert not jwt_mounts and not jwt_volumes, f"{svc}: a key-set volume with tokens off"
            continue
        settings = merged(r.values["defaults"], r.values["services"][svc])
        assert env.get("SHOPMESH_JWT_JWKS") == f"{JWKS_DIR}/jwks.json", f"{svc}: SHOPMESH_JWT_JWKS is {env.get('SHOPMESH_JWT_JWKS')!r}"
        assert env.get("SHOPMESH_JWT_ISSUER") == jwt["issuer"], f"{svc}: issuer {env.get('SHOPMESH_JWT_ISSUER')!r}"
        assert env.get("SHOPMESH_JWT_AUDIENCE") == jwt["audience"], f"{svc}: audience {env.get('SHOPMESH_JWT_AUDIENCE')!r}"
        assert env.get("SHOPMESH_JWT_REQUIRE") == settings["jwtRequire"], f"{svc}: requires tokens {env.get('SHOPMESH_JWT_REQUIRE')!r}, not {settings['jwtRequire']!r}"
        (mount,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == JWKS_DIR]
        assert mount.get("readOnly") is True, f"{svc}: key set mounted writable"
        (volume,) = [v for v in pod.get("volumes", []) if v["name"] == mount["name"]]
        assert len(maps) == 1 and volume.get("configMap", {}).get("name") == maps[0]["metadata"]["name"], f"{svc}: mounts {volume}, not the key-set ConfigMap"
        assert "checksum/jwks" in pod_template["metadata"].get("annotations", {}), f"{svc}: pods do not roll when the key set changes"
    if not jwt.get("jwks"):
        assert not maps, "a key-set ConfigMap with jwt.jwks empty"
        return "off: no variables, no ConfigMap"
    assert maps[0]["data"] == {"jwks.json": jwt["jwks"]}, "the ConfigMap does not hold jwt.jwks as jwks.json"
    return "on: " + ", ".join(f"{svc} {merged(r.values['defaults'], r.values['services'][svc])['jwtRequire']}" for svc in SERVICES)


def check_limits(r: Rendered) -> str:
    for svc in SERVICES:
        limits = merged(r.values["defaults"], r.values["services"][svc])["limits"]
        env = env_of(r.one("Deployment", name(svc))["spec"]["template"]["spec"]["containers"][0])
        want = {
            "SHOPMESH_MAX_METADATA_BYTES": str(limits["maxMetadataBytes"]),
            "SHOPMESH_RATE_LIMIT_RPS": str(limits["rateLimitRps"]),
            "SHOPMESH_RATE_LIMIT_BURST": str(limits["rateLimitBurst"]),
        }
        got = {k: env.get(k) for k in want}
        assert got == want, f"{svc}: limits {got}, expected {want}"
    return ", ".join(f"{svc} {merged(r.values['defaults'], r.values['services'][svc])['limits']['rateLimitRps']}/s" for svc in SERVICES)


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

    checks.run("helm lint --strict, default values", lambda: lint_clean(None, "default values"))
    checks.run("helm lint --strict, ci/production-values.yaml", lambda: lint_clean(production, "production"))

    # The renderings under test: both values files, and each optional part turned the other way.
    scenarios: dict[str, dict] = {
        "default values": {},
        "ci/production-values.yaml": production,
        "production, every optional part off": merged(production, {
            "networkPolicy": {"enabled": False},
            "serviceMonitor": {"enabled": False},
            "defaults": {"autoscaling": {"inFlightRequests": {"enabled": False}}},
            "database": {"existingSecret": ""},
            "otel": {"endpoint": ""},
        }),
        "default, every optional part on": {
            "networkPolicy": {"enabled": True},
            "serviceMonitor": {"enabled": True},
            "defaults": {"autoscaling": {"inFlightRequests": {"enabled": True}}},
            "otel": {"endpoint": "http://otel-collector.observability:4317"},
        },
        # Tokens at the entry point; user and payment, reached only by order, check them when sent.
        "bearer tokens on, optional for user and payment, a rate limit": {
            "jwt": {"jwks": JWKS, "issuer": "https://id.example", "audience": "shopmesh"},
            "defaults": {"limits": {"rateLimitRps": "100", "rateLimitBurst": 200}},
            "services": {"user": {"jwtRequire": "never"}, "payment": {"jwtRequire": "never", "limits": {"rateLimitRps": "0"}}},
        },
        "mTLS and the authorization policy on, with NetworkPolicies": {
            "tls": {"enabled": True, "secretNames": {"payment": "payment-cert"}},
            "authz": {"enabled": True},
            "networkPolicy": {"enabled": True},
        },
        "mTLS on, policy off, another trust domain and probe port": {
            "tls": {"enabled": True, "trustDomain": "shop.example", "probePort": 9000},
        },
        # One service turns the metric off again: a `false` must beat the default's `true`.
        "in-flight metric on, off for payment only": {
            "defaults": {"autoscaling": {"inFlightRequests": {"enabled": True}}},
            "services": {"payment": {"autoscaling": {"inFlightRequests": {"enabled": False}}}},
        },
    }
    rendered: dict[str, Rendered] = {}
    for label, values in scenarios.items():
        def do_render(label: str = label, values: dict = values) -> str:
            r = Rendered(chart, values)
            r.values = chart.merge_values(values)
            rendered[label] = r
            return f"{len(r.objects)} objects"

        checks.run(f"render: {label}", do_render)

    def validate(r: Rendered) -> str:
        skipped = set()
        for path, obj in r.objects:
            if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
                skipped.add(obj["kind"])
                continue
            for version in versions:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = ".".join(str(p) for p in e.path)
                    raise AssertionError(f"{path}: {obj['kind']}/{obj['metadata']['name']} against {version}: {where}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    raise AssertionError(f"{path}: {e.message} (a CRD kind? list it in CRD_KINDS and test it below)")
        return f"{len(r.objects) - sum(1 for _, o in r.objects if o['kind'] in skipped)} objects against {' and '.join(versions)}" + (
            f"; CRD kinds left to the intent tests: {', '.join(sorted(skipped))}" if skipped else ""
        )

    for label, r in rendered.items():
        if validate_schemas:
            checks.run(f"kubernetes-validate --strict: {label}", lambda r=r: validate(r))

    for label, r in rendered.items():
        for svc in SERVICES:
            checks.run(f"intent [{label}]: {svc} service", lambda r=r, svc=svc: check_service(r, svc))
        for check in (check_order_upstreams, check_migration, check_test_pod, check_secret, check_otel,
                      check_network_policy, check_service_monitor, check_in_flight_metric, check_jwt, check_limits,
                      check_tls, check_authz):
            checks.run(f"intent [{label}]: {check.__name__.removeprefix('check_').replace('_', ' ')}", lambda r=r, c=check: c(r))

    # Values the chart must refuse, and the message it must refuse them with.
    def refused(values: dict, message: str) -> str:
        try:
            chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
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
        "a misspelt key (schema)": ({"services": {"user": {"autoscalling": {}}}}, "autoscalling"),
        "an env variable the chart sets itself (schema)": (
            {"defaults": {"env": {"SHOPMESH_DB_MIGRATE": "true"}}},
            "SHOPMESH_DB_MIGRATE",
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
        "a SQLite database URL (schema)": ({"database": {"urls": {"user": "sqlite://data/user.db"}}}, "/database/urls/user"),
        "an authorization policy without mTLS": ({"authz": {"enabled": True}}, "authz.enabled needs tls.enabled"),
        "a policy rule naming no SPIFFE caller (schema)": (
            {"authz": {"policy": {"rules": [{"callers": ["order"], "methods": ["/a.B/C"]}]}}},
            "/authz/policy/rules/0/callers/0",
        ),
    }
    for label, (values, message) in refusals.items():
        checks.run(f"refuses {label}", lambda v=values, m=message: refused(v, m))

    chart.close()
    return checks


if __name__ == "__main__":
    sys.exit(run_checks().finish())
