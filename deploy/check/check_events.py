"""The chart's events, checked on a rendering: which broker the services that publish or consume
events are pointed at (the chart's NATS, events.existingSecret, events.url, none), the chart's
NATS (config, routes, store on its PVC, password from the Secret, probes, PDB), the
NetworkPolicies around it (evaluated by podrunner/netpol.py), and KEDA's nats-jetstream triggers,
whose streams and durable consumers are read from the Rust code that creates them.

Used by check_chart.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from check_callers import Pod
from podrunner import netpol

Manifest = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
# The services that publish or consume events (docs/events.md); the others get no broker.
EVENT_SERVICES = ("order", "inventory", "notification")
NATS_CLIENT, NATS_CLUSTER, NATS_MONITOR = 4222, 6222, 8222


def consumers_in_code() -> dict[str, set[tuple[str, str]]]:
    """{service: {(stream, durable consumer)}} as services/<svc>/src declares its Subscriptions."""
    streams = dict(re.findall(r'pub const (\w+): Stream = Stream \{ name: "(\w+)"', (ROOT / "src/mesh/events/mod.rs").read_text()))
    out: dict[str, set[tuple[str, str]]] = {}
    for svc in EVENT_SERVICES:
        src = ROOT / "services" / svc / "src"
        consts = {k: v for f in src.glob("*.rs") for k, v in re.findall(r'pub const (\w+): &str = "([^"]+)";', f.read_text())}
        subs = re.findall(r"Subscription \{ durable: (?:\w+::)*(\w+), stream: (?:\w+::)*(\w+) \}", (src / "lib.rs").read_text())
        out[svc] = {(streams[stream], consts[durable]) for durable, stream in subs}
    assert out["inventory"] and out["notification"], f"no consumers found in the Rust code: {out}"
    return out


def broker(values: dict) -> str:
    if values["nats"]["enabled"]:
        return "chart"
    if values["events"].get("existingSecret"):
        return "secret"
    return "url" if values["events"]["url"] != "none" else ""


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in container.get("env", [])}


def nats_conf(text: str) -> dict[str, Any]:
    """What the checks read from nats.conf: top-level settings, the users, the routes, the store."""
    top = dict(re.findall(r"^(\w+): (.+)$", text, re.M))
    return {
        "top": top,
        "users": re.findall(r"\{user: \"([^\"]+)\", password: (\$\w+)\}", text),
        "routes": re.findall(r"^\s*nats://([^:\s]+):(\d+)$", text, re.M),
        "store": (re.search(r"jetstream \{\s*store_dir: (\S+)", text) or [None, None])[1],
        "cluster": re.search(r"^cluster \{", text, re.M) is not None,
    }


def check_events(r, services: list[str], release: str, namespace: str, domain: str) -> str:
    """`r` a check_chart.Rendered with r.values merged; `services` the enabled ones."""
    v = r.values
    kind = broker(v)
    nats_name = f"{release}-nats"
    deployments = {s: r.one("Deployment", f"{release}-{s}") for s in services}
    said = [f"broker: {kind or 'none'}"]
    replicas = str(v["events"]["streamReplicas"] or (v["nats"]["replicas"] if kind == "chart" else 1))
    for svc, d in deployments.items():
        (c,) = [c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == svc]
        env = env_of(c)
        if svc not in EVENT_SERVICES:
            assert "SHOPMESH_EVENTS_URL" not in env and "EVENTS_PASSWORD" not in env, f"{svc} uses no events, yet gets the broker's URL"
            continue
        assert "SHOPMESH_EVENTS_URL" in env, f"{svc} publishes or consumes events, yet gets no SHOPMESH_EVENTS_URL"
        url = env["SHOPMESH_EVENTS_URL"]
        if kind == "chart":
            want = f"nats://{v['nats']['user']}:$(EVENTS_PASSWORD)@{nats_name}.{namespace}.svc.{domain}:{NATS_CLIENT}"
            assert url.get("value") == want, f"{svc}: SHOPMESH_EVENTS_URL {url}, not {want}"
            # The kubelet expands $(EVENTS_PASSWORD) only from a variable defined before it.
            names = [e["name"] for e in c["env"]]
            assert names.index("EVENTS_PASSWORD") < names.index("SHOPMESH_EVENTS_URL"), f"{svc}: EVENTS_PASSWORD after the URL that uses it"
            ref = env["EVENTS_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": v["nats"]["existingSecret"] or nats_name, "key": "password"}, f"{svc}: password from {ref}"
        elif kind == "secret":
            assert url.get("valueFrom") == {"secretKeyRef": {"name": v["events"]["existingSecret"], "key": "events-url"}}, f"{svc}: URL {url}"
        else:
            assert url.get("value") == v["events"]["url"], f"{svc}: SHOPMESH_EVENTS_URL {url}, not events.url"
        if kind:
            assert env["SHOPMESH_EVENTS_REPLICAS"]["value"] == replicas, f"{svc}: stream replicas {env['SHOPMESH_EVENTS_REPLICAS']}, not {replicas}"
    nats = [o for o in r.kind("StatefulSet") if o["metadata"]["name"] == nats_name]
    if kind != "chart":
        assert not nats and not [o for _, o in r.objects if o["metadata"]["name"].startswith(nats_name)], "NATS objects without nats.enabled"
    else:
        said.append(check_chart_nats(r, nats[0], release, namespace, domain))
    said.append(check_policies(r, services, kind, nats[0] if nats else None, namespace))
    said.append(check_keda(r, services, kind, nats[0] if nats else None, namespace, domain))
    return "; ".join(s for s in said if s)


def check_chart_nats(r, sts: Manifest, release: str, namespace: str, domain: str) -> str:
    v = r.values["nats"]
    name = sts["metadata"]["name"]
    n = int(v["replicas"])
    assert sts["spec"]["replicas"] == n, f"{sts['spec']['replicas']} NATS servers, not {n}"
    pod = sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    c = pod["containers"][0]
    assert c["name"] == "nats", f"the StatefulSet's first container is {c['name']}"
    said = check_exporter(r, sts, namespace) if v["metrics"]["enabled"] else ""
    assert len(pod["containers"]) == 1 + bool(v["metrics"]["enabled"]), f"NATS pod containers {[x['name'] for x in pod['containers']]}"
    repo, tag = c["image"].rsplit(":", 1)
    assert repo.rsplit("/", 1)[-1] == "nats" and re.fullmatch(r"2\.1[0-9]\.\d+(-alpine)?", tag), f"NATS image {c['image']}: not the official nats image, 2.10 or later"
    assert pod["securityContext"] == v["podSecurityContext"] and c["securityContext"] == v["securityContext"], "NATS: security contexts are not the values'"
    assert pod.get("automountServiceAccountToken") is False, "NATS pods get an API token they never use"
    # The config: the mounted ConfigMap's nats.conf, the one the container is told to read.
    (cfg_vol,) = [vol for vol in pod["volumes"] if vol["name"] == "config"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "config"]
    assert c["args"] == ["--config", f"{mount['mountPath']}/nats.conf"], f"NATS args {c['args']}"
    conf = nats_conf(r.one("ConfigMap", cfg_vol["configMap"]["name"])["data"]["nats.conf"])
    env = env_of(c)
    limit = str((v["resources"].get("limits") or {}).get("memory", ""))
    if re.fullmatch(r"\d+[KMGT]i", limit):
        assert env["GOMEMLIMIT"]["value"] == limit + "B", f"GOMEMLIMIT {env['GOMEMLIMIT']}, not the memory limit {limit}"
    assert conf["top"].get("server_name") == "$SERVER_NAME" and env["SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", \
        "NATS server names are not the pods' names (KEDA asks a stream's leader by <server>.<headless Service>)"
    assert conf["top"].get("port") == str(NATS_CLIENT) and conf["top"].get("http_port") == str(NATS_MONITOR), f"NATS ports {conf['top']}"
    assert conf["users"] == [(v["user"], "$NATS_PASSWORD")], f"NATS users {conf['users']}: not {v['user']} with the Secret's password"
    secret = v["existingSecret"] or name
    assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "password"}, "NATS reads its password from elsewhere"
    secrets = [s for s in r.kind("Secret") if s["metadata"]["name"] == name]
    assert bool(secrets) != bool(v["existingSecret"]), "the chart's NATS Secret rendered beside nats.existingSecret, or missing without it"
    if secrets:
        assert set(secrets[0]["data"]) == {"password"}, f"NATS Secret keys {sorted(secrets[0]['data'])}"
    # JetStream's store on the PVC of each server.
    (data,) = [m for m in c["volumeMounts"] if m["name"] == "data"]
    assert conf["store"] == data["mountPath"], f"JetStream stores in {conf['store']}, the PVC is at {data['mountPath']}"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == v["jetstream"]["size"], "the store's PVC"
    assert claim["spec"].get("storageClassName", "") == v["jetstream"]["storageClass"], "the store's StorageClass"
    # Probes on the monitoring port, JetStream's health.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"].startswith("/healthz") and ports[get["port"]] == NATS_MONITOR, f"NATS {probe}: {get}"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz?js-enabled-only=true", "NATS liveness is not JetStream's"
    # Clients reach the servers through the Service the URLs name; routes through the headless one.
    svc = r.one("Service", name)
    assert netpol.matches({"matchLabels": svc["spec"]["selector"]}, labels) and any(
        p["port"] == NATS_CLIENT and ports[p["targetPort"]] == NATS_CLIENT for p in svc["spec"]["ports"]), "the NATS Service does not reach the client port"
    headless = r.one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"].get("publishNotReadyAddresses") is True, \
        "the StatefulSet's Service is not headless with not-ready addresses (a cluster forms before it is ready)"
    pods = [f"{name}-{i}.{headless['metadata']['name']}.{namespace}.svc.{domain}".rstrip(".") for i in range(n)]
    pdbs = [p for p in r.kind("PodDisruptionBudget") if netpol.matches(p["spec"]["selector"], labels)]
    if n > 1:
        assert conf["cluster"] and sorted(h for h, _ in conf["routes"]) == sorted(pods) and {p for _, p in conf["routes"]} == {str(NATS_CLUSTER)}, \
            f"routes {conf['routes']}, not every server's {pods}"
        assert sts["spec"].get("podManagementPolicy") == "Parallel", "clustered NATS started one pod at a time: no quorum until all are"
        assert len(pdbs) == 1 and pdbs[0]["spec"].get("maxUnavailable") == 1, "a NATS cluster without a PDB keeping its quorum"
    else:
        assert not conf["cluster"] and not conf["routes"] and not pdbs, "a single NATS server with routes or a PDB"
    return f"NATS {c['image']} x{n}, store on a {v['jetstream']['size']} PVC, {len(conf['routes'])} routes" + (f"; {said}" if said else "")


def check_exporter(r, sts: Manifest, namespace: str) -> str:
    """The exporter reads the server's monitoring port, serves `metrics`; the ServiceMonitor and the scrapers reach it."""
    pod = sts["spec"]["template"]["spec"]
    (exporter,) = [c for c in pod["containers"] if c["name"] == "metrics"]
    assert exporter["args"][-1].startswith(f"http://localhost:{NATS_MONITOR}"), f"the exporter reads {exporter['args'][-1]}"
    assert exporter["securityContext"] == r.values["nats"]["securityContext"], "the exporter's securityContext is not the values'"
    port = {p["name"]: p["containerPort"] for p in exporter["ports"]}["metrics"]
    headless = r.one("Service", sts["spec"]["serviceName"])
    assert any(p["name"] == "metrics" and p["port"] == port for p in headless["spec"]["ports"]), "the headless Service has no metrics port"
    said = f"exporter on {port}"
    if r.values["serviceMonitor"]["enabled"]:
        monitors = [m for m in r.kind("ServiceMonitor") if netpol.matches(m["spec"]["selector"], headless["metadata"]["labels"])]
        assert len(monitors) == 1 and monitors[0]["spec"]["endpoints"][0]["port"] == "metrics", f"{len(monitors)} ServiceMonitors scrape NATS"
        said += ", a ServiceMonitor"
    policies = [dict(p, metadata={**p["metadata"], "namespace": namespace}) for p in r.kind("NetworkPolicy")]
    server = Pod(f"{sts['metadata']['name']}-0", namespace, sts["spec"]["template"]["metadata"]["labels"], "10.0.3.0", pod["containers"])
    for peer in r.values["networkPolicy"]["metricsScrapers"] if policies else []:
        ns = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name", namespace)
        prom = Pod("prometheus-0", ns, (peer.get("podSelector") or {}).get("matchLabels") or {}, "10.0.4.2")
        why = netpol.allowed(policies, prom, prom.ip, server, server.ip, port, {})
        assert why is None, f"the scraper {peer} may not reach the NATS exporter: {why}"
    return said


def check_policies(r, services: list[str], kind: str, sts: Manifest | None, namespace: str) -> str:
    policies = [dict(p, metadata={**p["metadata"], "namespace": namespace}) for p in r.kind("NetworkPolicy")]
    if not policies:
        return ""
    np = r.values["networkPolicy"]
    pods = {s: Pod(f"{s}-0", namespace, d["spec"]["template"]["metadata"]["labels"], f"10.0.1.{i}", d["spec"]["template"]["spec"]["containers"])
            for i, s in enumerate(services) for d in [r.one("Deployment", f"shopmesh-{s}")]}
    users = [s for s in services if s in EVENT_SERVICES]
    stranger = Pod("curious", namespace, {"app": "curious"}, "10.0.2.1")
    if kind == "chart":
        labels, containers = sts["spec"]["template"]["metadata"]["labels"], sts["spec"]["template"]["spec"]["containers"]
        servers = [Pod(f"{sts['metadata']['name']}-{i}", namespace, labels, f"10.0.3.{i}", containers) for i in range(sts["spec"]["replicas"])]
        for s, p in pods.items():
            why = netpol.allowed(policies, p, p.ip, servers[0], servers[0].ip, NATS_CLIENT, {})
            assert (why is None) == (s in users), f"{s} -> NATS {NATS_CLIENT}: {why or 'allowed'}; only {users} should be"
        assert netpol.allowed(policies, stranger, stranger.ip, servers[0], servers[0].ip, NATS_CLIENT, {}), "a stranger pod reaches NATS"
        assert netpol.allowed(policies, stranger, stranger.ip, servers[0], servers[0].ip, NATS_MONITOR, {}), "a stranger pod reaches NATS's monitoring"
        for peer in r.values["nats"]["monitoringClients"] + np["metricsScrapers"]:
            ns = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name", namespace)
            client = Pod("keda-operator", ns, (peer.get("podSelector") or {}).get("matchLabels") or {}, "10.0.4.1")
            why = netpol.allowed(policies, client, client.ip, servers[0], servers[0].ip, NATS_MONITOR, {})
            assert why is None, f"{peer} may not read NATS's monitoring (KEDA's scaler, the scrapers): {why}"
        if len(servers) > 1:
            why = netpol.allowed(policies, servers[1], servers[1].ip, servers[0], servers[0].ip, NATS_CLUSTER, {})
            assert why is None, f"NATS routes between the servers refused: {why}"
        assert netpol.allowed(policies, pods[services[0]], "10.0.1.0", servers[0], servers[0].ip, NATS_CLUSTER, {}), "a service reaches NATS's route port"
        return f"NATS {NATS_CLIENT} open to {users} only, monitoring to KEDA and the scrapers"
    if kind:
        port = r.values["events"]["url"].rsplit(":", 1)[-1] if kind == "url" and re.search(r":\d+$", r.values["events"]["url"]) else np["events"]["port"]
        # The broker as the policy's first peer names it: a pod of that namespace, else an address.
        to = np["events"]["to"][:1]
        ns = ((to[0].get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name", namespace) if to else ""
        server = Pod("nats-0", ns, (to[0].get("podSelector") or {}).get("matchLabels") or {}, "192.0.2.10") if to and "ipBlock" not in to[0] else None
        for s, p in pods.items():
            why = netpol.allowed(policies, p, p.ip, server, "192.0.2.10", int(port), {})
            assert (why is None) == (s in users), f"{s} -> the external NATS :{port}: {why or 'allowed'}; only {users} should be"
        return f"the external NATS :{port} reachable from {users} only"
    return ""


def check_keda(r, services: list[str], kind: str, sts: Manifest | None, namespace: str, domain: str) -> str:
    scaled = {o["spec"]["scaleTargetRef"]["name"].removeprefix("shopmesh-"): o for o in r.kind("ScaledObject")}
    if not scaled:
        return ""
    code = consumers_in_code()
    endpoint = r.values["events"]["monitoringEndpoint"]
    if kind == "chart":
        endpoint = f"{sts['spec']['serviceName']}.{namespace}.svc.{domain}".rstrip(".") + f":{NATS_MONITOR}"
    counted = 0
    for svc, obj in scaled.items():
        triggers = [t["metadata"] for t in obj["spec"]["triggers"] if t["type"] == "nats-jetstream"]
        want = code.get(svc, set()) if kind and endpoint else set()
        got = {(t["stream"], t["consumer"]) for t in triggers}
        assert got == want and len(triggers) == len(want), f"{svc}: KEDA scales on the lag of {sorted(got)}, not {sorted(want)} (the Rust code's consumers)"
        for t in triggers:
            assert t["natsServerMonitoringEndpoint"] == endpoint, f"{svc}: KEDA reads {t['natsServerMonitoringEndpoint']}, not {endpoint}"
            own = (((r.values["services"].get(svc) or {}).get("autoscaling") or {}).get("keda") or {}).get("lagThreshold")
            threshold = str(own or r.values["defaults"]["autoscaling"]["keda"]["lagThreshold"])
            assert t["lagThreshold"] == threshold, f"{svc}: lagThreshold {t['lagThreshold']}, not {threshold}"
            assert t["account"] == ("$G" if kind == "chart" else r.values["events"]["account"]), f"{svc}: account {t['account']}"
            counted += 1
    return f"KEDA: {counted} nats-jetstream triggers on the consumers {sorted(c for s in code.values() for _, c in s)}" if counted else "KEDA: no lag triggers (no broker)"


def compose_nats_image() -> str:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-images"]["nats"]
