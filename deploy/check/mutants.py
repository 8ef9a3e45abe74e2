"""Proof that the chart checks can fail: each mutant breaks one thing in a copy of the chart, and
check_chart.py must then report a failure naming it. A mutant that survives is a check that
guards nothing. Run with `scripts/check-deploy --mutants` (slower than the checks themselves);
`mutants.py TEXT` runs only the mutants whose label contains TEXT.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from check_chart import CHART, run_checks
from harness import Checks

# (what breaks, file, old text, new text, text a failure must contain, validate against schemas)
Edit = tuple[str, str, str, str, str, bool]
MUTANTS: list[Edit] = [
    ("startup probe asks the readiness name", "templates/deployment.yaml",
     "          startupProbe:\n            grpc:\n              port: {{ include \"shopmesh.probePort\" $ctx }}\n              service: liveness",
     "          startupProbe:\n            grpc:\n              port: {{ include \"shopmesh.probePort\" $ctx }}\n              service: {{ include \"shopmesh.grpcService\" $ctx }}",
     "startupProbe asks health name", False),
    ("liveness probe on another port", "templates/deployment.yaml",
     "          livenessProbe:\n            grpc:\n              port: {{ include \"shopmesh.probePort\" $ctx }}",
     "          livenessProbe:\n            grpc:\n              port: 8080",
     "livenessProbe asks port 8080", False),
    ("readiness probe asks liveness", "templates/deployment.yaml",
     "              service: {{ include \"shopmesh.grpcService\" $ctx }}", "              service: liveness",
     "readinessProbe asks health name 'liveness'", False),
    ("no readiness probe", "templates/deployment.yaml", "          readinessProbe:\n", "          x-readinessProbe:\n",
     "no gRPC readinessProbe", False),
    ("writable root filesystem", "values.yaml", "    readOnlyRootFilesystem: true\n    runAsNonRoot: true\n    capabilities:\n      drop: [ALL]\n\n", "    readOnlyRootFilesystem: false\n    runAsNonRoot: true\n    capabilities:\n      drop: [ALL]\n\n",
     "readOnlyRootFilesystem is not true", False),
    ("privilege escalation allowed", "templates/deployment.yaml", "            {{- toYaml $svc.securityContext | nindent 12 }}",
     "            allowPrivilegeEscalation: true", "allowPrivilegeEscalation is not false", False),
    ("capabilities kept", "templates/migrate-job.yaml", "            {{- toYaml $m.securityContext | nindent 12 }}",
     "            allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: true\n            runAsNonRoot: true\n            capabilities: {drop: [NET_RAW]}",
     "capabilities do not drop ALL", False),
    ("pod may run as root", "templates/deployment.yaml", "        {{- toYaml $svc.podSecurityContext | nindent 8 }}",
     "        runAsNonRoot: false", "pod securityContext.runAsNonRoot is not true", False),
    ("the service's container security context not the values'", "templates/deployment.yaml", "            {{- toYaml $svc.securityContext | nindent 12 }}",
     "            {{- toYaml $.Values.defaults.securityContext | nindent 12 }}", "payment/payment: securityContext", False),
    ("the schema lets a pod run as root", "values.schema.json", "\"runAsNonRoot\": {\n          \"const\": true\n        }", "\"runAsNonRoot\": {\n          \"type\": \"boolean\"\n        }",
     "rendered although it should fail with '/defaults/podSecurityContext/runAsNonRoot'", False),
    ("a uid fixed where the platform assigns it", "templates/migrate-job.yaml",
     "{{- $pgIds := pick (.Values.postgresql.podSecurityContext | default dict) \"runAsUser\" \"runAsGroup\" }}",
     "{{- $pgIds := dict \"runAsUser\" 999 }}", "ids left to the platform, yet", False),
    ("pods without fsGroup: the kubelet's root-owned key files unreadable", "values.yaml", "    fsGroup: 65532\n", "",
     "cannot read /var/run/shopmesh/mesh-ca/tls.crt", False),
    ("no seccomp profile", "templates/tests/test-health.yaml", "    {{- toYaml .Values.defaults.podSecurityContext | nindent 4 }}",
     "    runAsNonRoot: true\n    seccompProfile: {type: Unconfined}", "pod seccompProfile is not RuntimeDefault", False),
    ("Service not headless", "templates/service.yaml", "  clusterIP: None\n", "", "is not headless", False),
    ("no appProtocol grpc", "templates/service.yaml", "      appProtocol: grpc\n", "", "with appProtocol grpc", False),
    ("HPA minReplicas 1", "templates/hpa.yaml", "minReplicas: {{ $as.minReplicas }}", "minReplicas: 1", "HPA minReplicas 1 < 2", False),
    ("HPA targets nothing", "templates/hpa.yaml", "    name: {{ include \"shopmesh.componentName\" $ctx }}\n  minReplicas",
     "    name: {{ include \"shopmesh.componentName\" $ctx }}-x\n  minReplicas", "0 HPAs target Deployment", False),
    ("HPA without behaviour", "templates/hpa.yaml", "  behavior:\n    {{- toYaml $as.behavior | nindent 4 }}", "",
     "no scale-up and scale-down behaviour", False),
    ("in-flight metric always on", "templates/hpa.yaml", "{{- if $as.inFlightRequests.enabled }}", "{{- if true }}",
     "in-flight metric disabled but the HPA has a Pods metric", False),
    ("merge, where the defaults win, instead of mergeOverwrite", "templates/_helpers.tpl",
     "{{- $svc := mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy (get .root.Values.services .name)) -}}",
     "{{- $svc := merge (deepCopy .root.Values.defaults) (deepCopy (get .root.Values.services .name)) -}}",
     "payment: in-flight metric disabled but the HPA has a Pods metric", False),
    ("PDB selects no pods", "templates/pdb.yaml",
     "  selector:\n    matchLabels:\n      {{- include \"shopmesh.selectorLabels\" $ctx | nindent 6 }}",
     "  selector:\n    matchLabels:\n      app: nothing", "0 PodDisruptionBudgets select its pods", False),
    ("replicas set in the Deployment", "templates/deployment.yaml", "  revisionHistoryLimit: 5", "  replicas: 2\n  revisionHistoryLimit: 5",
     "sets replicas", False),
    ("services migrate on start", "templates/deployment.yaml",
     "            - name: SHOPMESH_DB_MIGRATE\n              value: \"false\"", "            - name: SHOPMESH_DB_MIGRATE\n              value: \"true\"",
     "SHOPMESH_DB_MIGRATE is 'true', not 'false'", False),
    ("grace period from the shutdown timeout alone", "templates/deployment.yaml",
     "terminationGracePeriodSeconds: {{ $svc.lifecycle.terminationGracePeriodSeconds }}",
     "terminationGracePeriodSeconds: {{ $svc.lifecycle.shutdownTimeoutSeconds }}", "terminationGracePeriodSeconds 10 < drain", False),
    ("no render-time grace check", "templates/_helpers.tpl", "{{- if lt (int $l.terminationGracePeriodSeconds) (int $needed) -}}",
     "{{- if false -}}", "rendered although it should fail", False),
    ("listen address on another port", "templates/deployment.yaml", "value: \"0.0.0.0:{{ $svc.port }}\"", "value: \"0.0.0.0:8080\"",
     "listen address does not match", False),
    ("order calls a ClusterIP-style name", "templates/_helpers.tpl",
     "(dict \"root\" .root \"service\" (include \"shopmesh.headlessName\" .))",
     "(dict \"root\" .root \"service\" (include \"shopmesh.componentName\" .))", "not the absolute headless name", False),
    ("cluster DNS names without the trailing dot", "templates/_helpers.tpl",
     "{{- printf \"%s.\" (trimSuffix \".\" .Values.clusterDomain) -}}", "{{- trimSuffix \".\" .Values.clusterDomain -}}",
     "not the absolute headless name", False),
    ("pods see every database URL", "templates/deployment.yaml", "          env:\n            - name: SHOPMESH_{{ $upper }}_LISTEN",
     "          env:\n            - name: SHOPMESH_X_DATABASE_URL\n              value: x\n            - name: SHOPMESH_{{ $upper }}_LISTEN",
     "sees other services' database URLs", False),
    ("no zone spread", "templates/deployment.yaml", "list \"topology.kubernetes.io/zone\" \"kubernetes.io/hostname\"",
     "list \"kubernetes.io/hostname\"", "not spread over zones and nodes", False),
    ("no resources", "templates/deployment.yaml", "            {{- toYaml $svc.resources | nindent 12 }}", "            {}",
     "no cpu requests", False),
    ("ServiceAccount token mounted", "templates/serviceaccount.yaml", "automountServiceAccountToken: false", "automountServiceAccountToken: true",
     "mounts its token", False),
    ("migrations after install", "templates/migrate-job.yaml", "{{- $hook := ternary \"pre-upgrade\" \"pre-install,pre-upgrade\" $bundled }}",
     "{{- $hook := ternary \"post-upgrade\" \"post-install,post-upgrade\" $bundled }}", "migrate Job hook is", False),
    ("the migrate hook waits without a bound", "templates/migrate-job.yaml",
     "              value: {{ .Values.database.waitTimeoutSeconds | quote }}", "              value: \"100000\"",
     "the wait is not bounded", False),
    ("pods never migrate the bundled database", "templates/deployment.yaml",
     "            - name: SHOPMESH_DB_MIGRATE\n              value: \"true\"", "            - name: SHOPMESH_DB_MIGRATE\n              value: \"false\"",
     "SHOPMESH_DB_MIGRATE is 'false', not 'true'", False),
    ("fixed database passwords", "templates/_helpers.tpl", "{{- $_ := set $out . (randAlphaNum 32) -}}",
     "{{- $_ := set $out . \"shopmesh\" -}}", "a weak or fixed password", False),
    ("no database and no failure", "templates/_helpers.tpl",
     "{{- if and (not .Values.postgresql.enabled) (not .Values.database.existingSecret) -}}", "{{- if false -}}",
     "rendered although it should fail with 'no database", False),
    ("PostgreSQL may run as root", "templates/postgresql.yaml", "        {{- toYaml $pg.podSecurityContext | nindent 8 }}", "        runAsNonRoot: false",
     "PostgreSQL: pod securityContext.runAsNonRoot is not true", False),
    ("PostgreSQL data off the PVC", "templates/postgresql.yaml", "            - name: data\n              mountPath: /var/lib/postgresql/data",
     "            - name: run2\n              mountPath: /var/lib/postgresql/data2", "the data directory is not on the PVC", False),
    ("hook Secret created after the Job", "templates/migrate-job.yaml", "helm.sh/hook-weight: \"-10\"", "helm.sh/hook-weight: \"10\"",
     "is not created before the migrate Job", False),
    ("Job reads the release's password Secret", "templates/migrate-job.yaml",
     "{{- $urls := ternary (printf \"%s-migrate\" $fullname) (ternary .Values.postgresql.existingSecret .Values.database.existingSecret $bundled) $copy }}",
     "{{- $urls := ternary (include \"shopmesh.postgresName\" .) (ternary .Values.postgresql.existingSecret .Values.database.existingSecret $bundled) $copy }}",
     "not shopmesh-migrate/", False),
    ("passwords generated beside postgresql.existingSecret", "templates/postgresql.yaml", "{{- if not $pg.existingSecret }}", "{{- if true }}",
     "the chart creates password Secrets although", False),
    ("database URLs rendered with the render's passwords", "templates/_helpers.tpl",
     "  value: {{ printf \"postgres://shopmesh_%s:$(DATABASE_PASSWORD)@%s:5432/shopmesh_%s\"",
     "  value: {{ printf \"postgres://shopmesh_%s:x@%s:5432/shopmesh_%s\"", "composed from the role's password", False),
    ("a checksum of generated passwords rolls pods on every render", "templates/deployment.yaml",
     "checksum/authz-policy: {{ include \"shopmesh.authzPolicy\" $ | sha256sum }}",
     "checksum/authz-policy: {{ include \"shopmesh.postgresPasswords\" $ | sha256sum }}", "two renders of the same values differ in the pod templates", False),
    ("generation without a cluster not refused", "templates/_helpers.tpl",
     "{{- if and (not (include \"shopmesh.clusterAnswers\" .)) (not .Values.generateSecretsWithoutCluster) -}}", "{{- if false -}}",
     "rendered although it should fail with 'rendered without a cluster", False),
    ("the trust bundle from the init container's files, not the CA Secret", "templates/deployment.yaml",
     "              value: /etc/shopmesh/trust/ca.crt", "              value: /etc/shopmesh/tls/ca.crt", "not the CA Secret's ca.crt alone", False),
    ("OTEL variables without an endpoint", "templates/deployment.yaml", "{{- with $.Values.otel.endpoint }}", "{{- with \"http://x:4317\" }}",
     "OTEL variables set with no endpoint", False),
    ("NetworkPolicies always rendered", "templates/networkpolicy.yaml", "{{- if .Values.networkPolicy.enabled }}", "{{- if true }}",
     "NetworkPolicies rendered with networkPolicy.enabled false", False),
    ("callees open to themselves instead of their callers", "templates/networkpolicy.yaml",
     "{{- include \"shopmesh.selectorLabels\" (dict \"root\" $ \"name\" $caller) | nindent 14 }}",
     "{{- include \"shopmesh.selectorLabels\" (dict \"root\" $ \"name\" $name) | nindent 14 }}", "is open to", False),
    ("order may not call its callees", "templates/networkpolicy.yaml", "    {{- range $callee := include \"shopmesh.callees\" $ctx | fromJsonArray }}\n    # A service this one calls.",
     "    {{- range $callee := list }}\n    # A service this one calls.", "order may call []", False),
    ("the edge admitted to every service", "templates/networkpolicy.yaml", "        {{- if hasKey $public $name }}", "        {{- if true }}",
     "from outside the release, expected []", False),
    ("GRPCRoutes expose every method of a service", "templates/edge.yaml", "            {{- if ne $m \"*\" }}", "            {{- if false }}",
     "not what the policy lets the edge call", False),
    ("token-only values render a mesh whose inner calls carry no credential", "templates/_helpers.tpl",
     "{{- if and .Values.jwt.jwks (not (include \"shopmesh.tlsEnabled\" .)) -}}", "{{- if false -}}",
     "rendered although it should fail with 'service-to-service calls", False),
    ("global.imageRegistry ignored", "templates/_helpers.tpl", "{{- with (.root.Values.global | default dict).imageRegistry -}}", "{{- with \"\" -}}",
     "is not from ['mirror.example.com/shopmesh'", False),
    ("commonLabels left off", "templates/_helpers.tpl", "{{- range $k, $v := .root.Values.commonLabels }}", "{{- range $k, $v := dict }}",
     "no commonLabel example.com/", False),
    ("a latency objective off the buckets renders", "templates/prometheusrule.yaml",
     "{{- if not (has (toString $r.latencyThresholdSeconds) $buckets) -}}", "{{- if false -}}",
     "rendered although it should fail with 'prometheusRule.latencyThresholdSeconds is 0.3", False),
    ("order pointed at a disabled callee", "templates/_helpers.tpl",
     "{{- if eq (toString (dig \"enabled\" true (get $.root.Values.services $callee))) \"false\" -}}", "{{- if false -}}",
     "rendered although it should fail with 'services.order.calls names catalog, but services.catalog.enabled is false", False),
    ("an HPA on CPU with no CPU request renders", "templates/_helpers.tpl",
     "{{- if and $svc.autoscaling.enabled (not (dig \"requests\" \"cpu\" \"\" ($svc.resources | default dict))) -}}", "{{- if false -}}",
     "rendered although it should fail with 'the autoscaler scales on CPU utilisation", False),
    ("ServiceMonitors with no scraper admitted", "templates/networkpolicy.yaml",
     "{{- if and .Values.serviceMonitor.enabled (not $np.metricsScrapers) }}", "{{- if false }}",
     "rendered although it should fail with 'nothing may reach the metrics port", False),
    ("payment's ledger volume replaces the values' list", "templates/_helpers.tpl",
     "{{- $_ := set $svc \"extraVolumes\" (concat ($svc.extraVolumes | default list) .volumes) -}}",
     "{{- $_ := set $svc \"extraVolumes\" .volumes -}}", "was replaced by the chart's own", False),
    ("an edge without identity renders", "templates/_helpers.tpl", "{{- if or (not $.Values.jwt.jwks) (ne $svc.jwtRequire \"unidentified\") -}}",
     "{{- if false -}}", "rendered although it should fail with 'mTLS off: the edge would reach", False),
    ("the Ingress presents no mesh certificate", "templates/edge.yaml", "nginx.ingress.kubernetes.io/proxy-ssl-secret:", "x-proxy-ssl-secret:",
     "does not present the edge's certificate", False),
    ("a certificate naming another identity", "templates/certificates.yaml", "    - {{ include \"shopmesh.spiffeId\" (dict \"root\" $ \"sa\" .sa \"ns\" .ns) }}",
     "    - {{ include \"shopmesh.spiffeId\" (dict \"root\" $ \"sa\" \"shopmesh-gateway\") }}", "certificate identity", False),
    ("a caller admitted by every service's NetworkPolicy", "templates/_helpers.tpl", "{{- if $mine -}}", "{{- if true -}}",
     "has no method of payment, yet payment's NetworkPolicy admits it", False),
    ("a caller's rule for its service account in any namespace", "templates/_helpers.tpl",
     "(dict \"root\" $root \"ns\" .namespace \"sa\" .serviceAccount)", "(dict \"root\" $root \"ns\" \"*\" \"sa\" .serviceAccount)",
     "policy rules for spiffe://", False),
    ("an alert without its runbook", "templates/prometheusrule.yaml",
     "runbook_url: {{ include \"shopmesh.runbook\" (dict \"root\" $ \"alert\" \"ShopmeshCallsShed\") }}", "runbook_url: \"https://example.com/\"",
     "ShopmeshCallsShed: runbook_url", False),
    ("KEDA and an HPA on one Deployment", "templates/hpa.yaml", "{{- else }}\napiVersion: autoscaling/v2", "---\napiVersion: autoscaling/v2",
     "two HPAs on one Deployment", False),
    ("KEDA counts health checks", "templates/hpa.yaml", "rpc_server_active_requests{namespace=\\\"%s\\\",rpc_service=\\\"%s\\\"}",
     "rpc_server_active_requests{namespace=\\\"%s\\\",rpc_job=\\\"%s\\\"}", "does not select the service's own calls", False),
    ("extension points dropped", "templates/deployment.yaml", "      {{- include \"shopmesh.scheduling\" $svc | nindent 6 }}", "",
     "nodeSelector is None", False),
    ("an alert on a raw series", "templates/prometheusrule.yaml", "expr: shopmesh:order_oldest_pending_age_seconds:max > {{ $r.pendingAgeSeconds }}",
     "expr: shopmesh_order_oldest_pending_age_seconds > {{ $r.pendingAgeSeconds }}", "ShopmeshReconcilerPendingTooOld: compares", False),
    ("a rule promtool refuses", "templates/prometheusrule.yaml", "        for: 10m", "        for: 10 minutes", "promtool check rules", False),
    ("a GRPCRoute field of the wrong type (CRD schema)", "templates/edge.yaml", "          port: {{ (get $.Values.services $name).port }}",
     "          port: \"{{ (get $.Values.services $name).port }}\"", "against its CRD schema", True),
    ("ServiceMonitors always rendered", "templates/servicemonitor.yaml", "{{- if .Values.serviceMonitor.enabled }}", "{{- if true }}",
     "ServiceMonitors rendered with serviceMonitor.enabled false", False),
    ("ServiceMonitor scrapes the gRPC port", "templates/servicemonitor.yaml", "    - port: metrics", "    - port: grpc",
     "ServiceMonitor scrapes", False),
    ("helm test asks liveness", "templates/tests/test-health.yaml", "        - {{ include \"shopmesh.grpcService\" $svcCtx }}",
     "        - liveness", "helm test pod runs", False),
    ("probes on the gRPC port with mTLS on", "templates/_helpers.tpl",
     "{{- if include \"shopmesh.tlsEnabled\" .root -}}{{ .root.Values.tls.probePort }}", "{{- if false -}}{{ .root.Values.tls.probePort }}",
     "startupProbe asks port 50051, not 8086", False),
    ("every service mounts the user's certificate", "templates/_helpers.tpl",
     "(get .root.Values.tls.secretNames .name)", "(get .root.Values.tls.secretNames \"user\")",
     "comes from Secret", False),
    ("TLS key readable by everyone", "templates/deployment.yaml", "defaultMode: 0440", "defaultMode: 0444",
     "readable by others", False),
    ("no probe port with mTLS on", "templates/deployment.yaml",
     "            - name: SHOPMESH_PROBE_LISTEN\n              value: \"0.0.0.0:{{ $.Values.tls.probePort }}\"", "",
     "probe port listens on None", False),
    ("the chart's policy lets the gateway charge", "values.yaml",
     "-order\"]\n        methods:\n          - /shopmesh.payment.v1.PaymentService/Charge",
     "-order\", \"spiffe://x/ns/y/sa/shopmesh-gateway\"]\n        methods:\n          - /shopmesh.payment.v1.PaymentService/Charge",
     "differs from deploy/authz-policy.json", False),
    ("policy not rolled out on change", "templates/deployment.yaml", "checksum/authz-policy:", "checksum/other-policy:",
     "do not roll when the policy changes", False),
    ("authz renders without mTLS", "templates/deployment.yaml",
     "{{- if and (include \"shopmesh.authzEnabled\" .) (not (include \"shopmesh.tlsEnabled\" .)) }}", "{{- if false }}",
     "rendered although it should fail", False),
    ("an unknown field in a Deployment (schema validation)", "templates/deployment.yaml", "  revisionHistoryLimit: 5",
     "  revisionHistoryLimit: 5\n  replica: 2", "Additional properties are not allowed", True),
    ("a field of the wrong type in a PDB (schema validation)", "templates/pdb.yaml", "  unhealthyPodEvictionPolicy: AlwaysAllow",
     "  unhealthyPodEvictionPolicy: [AlwaysAllow]", "is not of type 'string'", True),
    # trafficDistribution came in Kubernetes 1.30: valid for the newest version, not the oldest.
    ("a field newer than the oldest supported Kubernetes (schema validation)", "templates/service.yaml",
     "  publishNotReadyAddresses: false", "  publishNotReadyAddresses: false\n  trafficDistribution: PreferClose",
     "against 1.29", True),
    ("the migration Job's sidecars as regular containers (the Job never completes)", "templates/migrate-job.yaml",
     "      containers:\n        {{- range $name := $services }}",
     "      containers:\n        {{- with $m.extraContainers }}\n        {{- toYaml . | nindent 8 }}\n        {{- end }}\n        {{- range $name := $services }}",
     "is a regular container: the Job would never complete", False),
    ("the migration Job ignores the node selector", "templates/migrate-job.yaml",
     "      {{- include \"shopmesh.scheduling\" $m | nindent 6 }}", "", "migration Job: nodeSelector is None", False),
    ("PostgreSQL ignores its scheduling values", "templates/postgresql.yaml",
     "      {{- include \"shopmesh.scheduling\" $pg | nindent 6 }}", "", "PostgreSQL: nodeSelector is None", False),
    ("bearer-token requirement ignores the per-service value", "templates/deployment.yaml",
     "value: {{ $svc.jwtRequire | quote }}", "value: {{ $.Values.defaults.jwtRequire | quote }}", "not 'never'", False),
    ("key set mounted writable", "templates/deployment.yaml", "              mountPath: /etc/shopmesh/jwt\n              readOnly: true",
     "              mountPath: /etc/shopmesh/jwt\n              readOnly: false", "key set mounted writable", False),
    ("pods do not roll on a new key set", "templates/deployment.yaml", "        checksum/jwks:", "        x-checksum/jwks:",
     "pods do not roll when the key set changes", False),
    ("a bearer-token variable without a key set", "templates/deployment.yaml",
     "            - name: SHOPMESH_JWT_REQUIRE\n              value: {{ $svc.jwtRequire | quote }}\n            {{- end }}",
     "            {{- end }}\n            - name: SHOPMESH_JWT_REQUIRE\n              value: {{ $svc.jwtRequire | quote }}",
     "bearer-token variables set with no jwt.jwks", False),
    ("the rate-limit burst ignores the values", "templates/deployment.yaml", "value: \"{{ $svc.limits.rateLimitBurst }}\"", "value: \"50\"",
     "limits {", False),
    ("the chart's CA key mounted into the service's container", "templates/deployment.yaml",
     "            - name: tls\n              mountPath: /etc/shopmesh/tls\n              readOnly: true\n",
     "            - name: tls\n              mountPath: /etc/shopmesh/tls\n              readOnly: true\n            {{- if $issued }}\n            - name: mesh-ca\n              mountPath: /var/run/shopmesh/mesh-ca\n              readOnly: true\n            {{- end }}\n",
     "the CA's key is mounted into the service's container", False),
    ("every pod's issuer signs the gateway's identity", "templates/deployment.yaml",
     "--spiffe-id={{ include \"shopmesh.spiffeId\" (dict \"root\" $ \"sa\" (include \"shopmesh.componentName\" $ctx)) }}",
     "--spiffe-id={{ include \"shopmesh.spiffeId\" (dict \"root\" $ \"sa\" \"shopmesh-gateway\") }}",
     "the init container issues", False),
    ("issued keys on a disk-backed volume", "templates/deployment.yaml", "            medium: Memory\n", "",
     "in-memory volume", False),
    ("pods rolled at once on a new chart CA", "templates/deployment.yaml", "        checksum/authz-policy:",
     "        checksum/mesh-ca: {{ (include \"shopmesh.meshCA\" $ | fromJson).crt | sha256sum }}\n        checksum/authz-policy:",
     "a new CA rolls the pods at once", False),
    ("the chart's CA always rendered", "templates/mesh-ca.yaml",
     "{{- if and (include \"shopmesh.anyChartIssued\" .) (not .Values.tls.chartCA.existingSecret) }}",
     "{{- if true }}", "the chart makes a CA nobody uses", False),
    ("certificates valid for the CA's lifetime", "templates/deployment.yaml",
     "--validity={{ $.Values.tls.chartCA.duration }}", "--validity=87600h", "not tls.chartCA.duration", False),
    # The events' broker (templates/nats.yaml, _events.tpl; check_events.py).
    ("NATS: order gets no broker", "templates/_events.tpl", '["inventory","notification","order"]', '["inventory","notification"]',
     "order publishes or consumes events, yet gets no SHOPMESH_EVENTS_URL", False),
    ("NATS: JetStream stores off the PVC", "templates/_events.tpl", "  store_dir: /data\n", "  store_dir: /tmp/js\n",
     "JetStream stores in /tmp/js", False),
    ("NATS: no routes between the servers", "templates/_events.tpl", "{{- if gt (int .Values.nats.replicas) 1 }}\ncluster {", "{{- if false }}\ncluster {",
     "routes [], not every server's", False),
    ("NATS: client port open to every pod", "templates/nats.yaml", "    # Clients: the services that publish or consume events.\n    - from:\n",
     "    # Clients: the services that publish or consume events.\n    - from:\n        - podSelector: {}\n", "a stranger pod reaches NATS", False),
    ("NATS: the services' egress to it dropped", "templates/networkpolicy.yaml", '    {{- include "shopmesh.eventsEgress" $ctx | nindent 4 }}\n', "",
     "-> NATS 4222: egress of", False),
    ("NATS: KEDA reads the wrong consumer", "templates/_events.tpl", '"notification-inventory"', '"notification-stock"',
     "KEDA scales on the lag of", False),
    ("NATS: server names not the pods'", "templates/_events.tpl", "server_name: $SERVER_NAME", "server_name: nats",
     "NATS server names are not the pods' names", False),
    ("NATS: a single server's PDB", "templates/nats.yaml", "{{- if $clustered }}\n---\n# A stream with R replicas", "{{- if true }}\n---\n# A stream with R replicas",
     "a single NATS server with routes or a PDB", False),
    ("NATS: password generated beside nats.existingSecret", "templates/nats.yaml", "{{- if not $nats.existingSecret }}", "{{- if true }}",
     "the chart's NATS Secret rendered beside nats.existingSecret", False),

]


def schema_mutant(chart: Path) -> None:
    """The per-service schema stops refusing unknown keys."""
    path = chart / "values.schema.json"
    schema = json.loads(path.read_text())
    schema["definitions"]["service"]["additionalProperties"] = True
    path.write_text(json.dumps(schema))


def services_schema_mutant(chart: Path) -> None:
    """The services map takes any name again."""
    path = chart / "values.schema.json"
    schema = json.loads(path.read_text())
    schema["properties"]["services"]["additionalProperties"] = {"$ref": "#/definitions/service"}
    path.write_text(json.dumps(schema))


FUNCTION_MUTANTS: list[tuple[str, Callable[[Path], None], str]] = [
    ("schema accepts unknown service keys", schema_mutant, "rendered although it should fail with 'autoscalling'"),
    ("schema accepts a service the binary does not serve", services_schema_mutant, "rendered although it should fail with \"additional properties 'shipping'"),
]


def main() -> int:
    results = Checks("mutants")
    with tempfile.TemporaryDirectory() as tmp:
        def attempt(label: str, mutate: Callable[[Path], None], expect: str, validate: bool) -> None:
            def killed() -> str:
                copy = Path(tmp) / "shopmesh"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(CHART, copy)
                mutate(copy)
                with contextlib.redirect_stdout(io.StringIO()):
                    outcome = run_checks(copy, validate_schemas=validate)
                assert outcome.failures, "survived: every check passed"
                matching = [f for f in outcome.failures if expect in f]
                assert matching, f"failed, but not with {expect!r}: {outcome.failures[:3]}"
                return f"{len(outcome.failures)} failing, e.g. {matching[0][:150]}"

            results.run(f"killed: {label}", killed)

        only = sys.argv[1] if len(sys.argv) > 1 else ""
        for label, file, old, new, expect, validate in MUTANTS:
            if only not in label:
                continue
            def edit(chart: Path, file: str = file, old: str = old, new: str = new) -> None:
                path = chart / file
                text = path.read_text()
                assert text.count(old) >= 1, f"mutant does not apply: {old!r} not in {file}"
                path.write_text(text.replace(old, new))

            attempt(label, edit, expect, validate)
        for label, mutate, expect in FUNCTION_MUTANTS:
            if only not in label:
                continue
            attempt(label, mutate, expect, False)
    return results.finish()


if __name__ == "__main__":
    sys.exit(main())
