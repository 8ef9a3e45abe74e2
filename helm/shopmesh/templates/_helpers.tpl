{{/* The chart's name, or nameOverride. */}}
{{- define "shopmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
Name prefix of every object: fullnameOverride, else <release>-<name> (the release's name alone when
it contains the name). Truncated to 40 characters so that the longest derived name,
"<prefix>-catalog-headless", stays within the 63 characters of a DNS label.
*/}}
{{- define "shopmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The enabled services' names, sorted, as a JSON list (use with fromJsonArray). */}}
{{- define "shopmesh.serviceNames" -}}
{{- $names := list -}}
{{- range $name, $svc := .Values.services -}}
{{- if ne (toString (dig "enabled" true $svc)) "false" -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- $names | sortAlpha | toJson -}}
{{- end -}}

{{/* Name of one service's objects (Deployment, ServiceAccount, HPA, PDB, …). Takes (dict "root" $ "name" "user"). */}}
{{- define "shopmesh.componentName" -}}
{{- printf "%s-%s" (include "shopmesh.fullname" .root) .name -}}
{{- end -}}

{{/* The headless Service through which callers find every ready pod of a service. */}}
{{- define "shopmesh.headlessName" -}}
{{- printf "%s-%s-headless" (include "shopmesh.fullname" .root) .name -}}
{{- end -}}

{{/* The cluster domain as an absolute DNS suffix: "cluster.local." (one lookup, no search-domain walk). */}}
{{- define "shopmesh.domain" -}}
{{- printf "%s." (trimSuffix "." .Values.clusterDomain) -}}
{{- end -}}

{{/* Fully qualified, absolute name of a Service: <name>.<ns>.svc.<domain>. Takes (dict "root" $ "service" "x"). */}}
{{- define "shopmesh.fqdn" -}}
{{- printf "%s.%s.svc.%s" .service .root.Release.Namespace (include "shopmesh.domain" .root) -}}
{{- end -}}

{{/* Address of a service for callers inside the cluster: http://<headless>.<ns>.svc.<domain>.:<port>. */}}
{{- define "shopmesh.serviceUrl" -}}
{{- $port := (get .root.Values.services .name).port -}}
{{- printf "http://%s:%v" (include "shopmesh.fqdn" (dict "root" .root "service" (include "shopmesh.headlessName" .))) $port -}}
{{- end -}}

{{/* The gRPC service a service serves, which is also the health name its readiness answers for. */}}
{{- define "shopmesh.grpcService" -}}
{{- printf "shopmesh.%s.v1.%sService" .name (title .name) -}}
{{- end -}}

{{- define "shopmesh.labels" -}}
{{- range $k, $v := .root.Values.commonLabels }}
{{- if not (has $k (list "helm.sh/chart" "app.kubernetes.io/part-of" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component")) }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: shopmesh
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{ include "shopmesh.selectorLabels" . }}
{{- end -}}

{{/* Labels that pick one component's pods (component = the service's name). */}}
{{- define "shopmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shopmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* An image's repository with global.imageRegistry (a mirror, e.g. registry.example.com) in front. */}}
{{- define "shopmesh.repository" -}}
{{- with (.root.Values.global | default dict).imageRegistry -}}{{ trimSuffix "/" . }}/{{- end -}}{{ .repository }}
{{- end -}}

{{- define "shopmesh.image" -}}
{{- $repo := include "shopmesh.repository" (dict "root" . "repository" .Values.image.repository) -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "shopmesh.postgresImage" -}}
{{- printf "%s:%s" (include "shopmesh.repository" (dict "root" . "repository" .Values.postgresql.image.repository)) .Values.postgresql.image.tag -}}
{{- end -}}

{{/* Where the database URLs come from: an existing Secret, or the bundled PostgreSQL. Fails with what to set. */}}
{{- define "shopmesh.checkDatabase" -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.database.existingSecret) -}}
{{- fail "no database: set postgresql.enabled=true (the chart deploys PostgreSQL) or database.existingSecret=<a Secret with the keys <service>-database-url, postgres://… URLs of your database>" -}}
{{- end -}}
{{- if and .Values.postgresql.enabled .Values.database.existingSecret -}}
{{- fail "database.existingSecret is set but so is postgresql.enabled: the services would use your database and the bundled PostgreSQL would sit idle; set postgresql.enabled=false" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the chart's PostgreSQL is a CloudNativePG Cluster (postgresql.mode), else "". */}}
{{- define "shopmesh.cloudnativepg" -}}
{{- if and .Values.postgresql.enabled (eq .Values.postgresql.mode "cloudnative-pg") -}}true{{- end -}}
{{- end -}}

{{- define "shopmesh.postgresName" -}}
{{- printf "%s-postgresql" (include "shopmesh.fullname" .) -}}
{{- end -}}

{{/* The Secret with the bundled PostgreSQL's passwords: postgresql.existingSecret or the chart's. */}}
{{- define "shopmesh.postgresSecret" -}}
{{- default (include "shopmesh.postgresName" .) .Values.postgresql.existingSecret -}}
{{- end -}}

{{/*
Whether a cluster answers `lookup`: "true" or "". Listing the release namespace's Secrets answers
with a (maybe empty) list whenever Helm talks to a cluster (Helm keeps its releases there, so
its user may list them), and with nothing under `helm template`, Argo CD and `--dry-run=client`.
Asked once per rendering.
*/}}
{{- define "shopmesh.clusterAnswers" -}}
{{- if not (hasKey .Values "__shopmeshCluster") -}}
{{- $_ := set .Values "__shopmeshCluster" (ternary "true" "" (not (empty (lookup "v1" "Secret" .Release.Namespace "")))) -}}
{{- end -}}
{{- get .Values "__shopmeshCluster" -}}
{{- end -}}

{{/*
Refuses to generate a secret that the next render would generate again. The chart makes the
mesh CA and the bundled PostgreSQL's passwords once and keeps them by reading them back
(`lookup`); rendered without a cluster it cannot, and each GitOps sync would rotate them (a new
CA splits the mesh, new passwords lock the services out of a database initialised with the old).
*/}}
{{- define "shopmesh.checkGenerated" -}}
{{- if and (not (include "shopmesh.clusterAnswers" .)) (not .Values.generateSecretsWithoutCluster) -}}
{{- $set := list -}}
{{- if and (include "shopmesh.anyChartIssued" .) (not .Values.tls.chartCA.existingSecret) -}}
{{- $set = append $set "tls.chartCA.existingSecret (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt; or tls.certManager.enabled=true)" -}}
{{- end -}}
{{- if and .Values.postgresql.enabled (not .Values.postgresql.existingSecret) -}}
{{- if include "shopmesh.cloudnativepg" . -}}
{{- $set = append $set "postgresql.existingSecret (cloudnative-pg: a base name B, with a kubernetes.io/basic-auth Secret B-<service> per service holding username shopmesh_<service> and its password)" -}}
{{- else -}}
{{- $set = append $set "postgresql.existingSecret (keys postgres-password and <service>-password; or an external database: postgresql.enabled=false, database.existingSecret)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.nats.enabled (not .Values.nats.existingSecret) -}}
{{- $set = append $set "nats.existingSecret (key password)" -}}
{{- end -}}
{{- if $set -}}
{{- fail (printf "rendered without a cluster (helm template, Argo CD, --dry-run=client): lookup finds nothing, so the mesh CA and the database passwords would be generated anew on every render and a GitOps sync would rotate them. Set %s; or, for a one-off render, generateSecretsWithoutCluster=true (helm/shopmesh/README.md: GitOps)" (join " and " $set)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The passwords the chart generates for the bundled PostgreSQL (no postgresql.existingSecret),
{"postgres-password": …, "<service>-password": …}: the ones its Secret already holds (lookup),
else new random ones (URL-safe: they are spliced into the database URLs). Computed once per
rendering. Returns JSON.
*/}}
{{- define "shopmesh.postgresPasswords" -}}
{{- if not (hasKey .Values "__shopmeshPasswords") -}}
{{- $existing := (lookup "v1" "Secret" .Release.Namespace (include "shopmesh.postgresName" .)) | default dict -}}
{{- $data := $existing.data | default dict -}}
{{- $out := dict -}}
{{- $keys := list "postgres-password" -}}
{{- range include "shopmesh.serviceNames" . | fromJsonArray -}}
{{- $keys = append $keys (printf "%s-password" .) -}}
{{- end -}}
{{- range $keys -}}
{{- if hasKey $data . -}}
{{- $_ := set $out . (get $data . | b64dec) -}}
{{- else -}}
{{- $_ := set $out . (randAlphaNum 32) -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "__shopmeshPasswords" $out -}}
{{- end -}}
{{- get .Values "__shopmeshPasswords" | toJson -}}
{{- end -}}

{{/*
A container's database URL variable for one service. An external database: the URL from
database.existingSecret. The bundled PostgreSQL: composed by the kubelet from the role's password
in `secret` (dependent-variable expansion), so no URL with a password is ever rendered and the
password is whatever that Secret holds (postgresql.existingSecret's, or the generated one).
Takes (dict "root" $ "name" "user" "secret" <Secret with the passwords>); returns EnvVar YAML.
*/}}
{{- define "shopmesh.databaseEnv" -}}
{{- $var := printf "SHOPMESH_%s_DATABASE_URL" (upper .name) -}}
{{- if include "shopmesh.cloudnativepg" .root -}}
{{- /* CloudNativePG: the role's basic-auth Secret; the primary, through the operator's -rw Service. */}}
{{- $pgName := include "shopmesh.postgresName" .root }}
- name: DATABASE_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ printf "%s-%s" (default $pgName .root.Values.postgresql.existingSecret) .name }}, key: password}}
- name: {{ $var }}
  value: {{ printf "postgres://shopmesh_%s:$(DATABASE_PASSWORD)@%s:5432/shopmesh_%s" .name (include "shopmesh.fqdn" (dict "root" .root "service" (printf "%s-rw" $pgName))) .name | quote }}
{{- else if .root.Values.postgresql.enabled -}}
{{- /* No SHOPMESH_ prefix: the binary never reads it; only the kubelet does, expanding it into the URL below. */}}
- name: DATABASE_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ .secret }}, key: {{ .name }}-password}}
- name: {{ $var }}
  value: {{ printf "postgres://shopmesh_%s:$(DATABASE_PASSWORD)@%s:5432/shopmesh_%s" .name (include "shopmesh.fqdn" (dict "root" .root "service" (include "shopmesh.postgresName" .root))) .name | quote }}
{{- else -}}
- name: {{ $var }}
  valueFrom: {secretKeyRef: {name: {{ .root.Values.database.existingSecret }}, key: {{ .name }}-database-url}}
{{- end -}}
{{- end -}}

{{/*
One service's settings: `defaults` merged with `services.<name>`, checked for consistency.
Takes (dict "root" $ "name" "user"); returns YAML (use with fromYaml).
*/}}
{{- define "shopmesh.settings" -}}
{{- /* mergeOverwrite: the service's keys win, `false` and 0 included; deepCopy keeps .Values intact. */ -}}
{{- $svc := mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy (get .root.Values.services .name)) -}}
{{- $l := $svc.lifecycle -}}
{{- /* 3 s after drain and shutdown: ~2 s to flush telemetry, 1 s for the signal and the exit. */ -}}
{{- $needed := add $l.drainDelaySeconds $l.shutdownTimeoutSeconds 3 -}}
{{- if lt (int $l.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "services.%s: lifecycle.terminationGracePeriodSeconds is %v but must be at least drainDelaySeconds (%v) + shutdownTimeoutSeconds (%v) + 3 s of telemetry flush = %v, or the kubelet kills pods whose in-flight calls may still finish" .name $l.terminationGracePeriodSeconds $l.drainDelaySeconds $l.shutdownTimeoutSeconds $needed) -}}
{{- end -}}
{{- if gt (int $svc.autoscaling.minReplicas) (int $svc.autoscaling.maxReplicas) -}}
{{- fail (printf "services.%s: autoscaling.minReplicas (%v) is above maxReplicas (%v)" .name $svc.autoscaling.minReplicas $svc.autoscaling.maxReplicas) -}}
{{- end -}}
{{- range $callee := $svc.calls | default list -}}
{{- if not (hasKey $.root.Values.services $callee) -}}
{{- fail (printf "services.%s.calls names %s, which is not a service" $.name $callee) -}}
{{- end -}}
{{- if eq (toString (dig "enabled" true (get $.root.Values.services $callee))) "false" -}}
{{- fail (printf "services.%s.calls names %s, but services.%s.enabled is false: %s would call 127.0.0.1, where nothing serves %s. Set services.%s.enabled=true" $.name $callee $callee $.name $callee $callee) -}}
{{- end -}}
{{- end -}}
{{- if and $svc.autoscaling.enabled (not (dig "requests" "cpu" "" ($svc.resources | default dict))) -}}
{{- fail (printf "services.%s: the autoscaler scales on CPU utilisation, a share of the CPU request, and there is none: set resources.requests.cpu (defaults or services.%s), or autoscaling.enabled=false" .name .name) -}}
{{- end -}}
{{- /* The chart's own volumes of a service come beside the values' lists, never instead of them. */ -}}
{{- with get (include "shopmesh.ownVolumes" . | fromYaml) .name -}}
{{- $_ := set $svc "extraVolumes" (concat ($svc.extraVolumes | default list) .volumes) -}}
{{- $_ := set $svc "extraVolumeMounts" (concat ($svc.extraVolumeMounts | default list) .mounts) -}}
{{- end -}}
{{- toYaml $svc -}}
{{- end -}}

{{/*
Volumes the binary needs written, per service: payment's simulated processor keeps its ledger in
./data (the home directory), which the read-only root filesystem does not allow; an emptyDir
there holds one ledger per pod.
*/}}
{{- define "shopmesh.ownVolumes" -}}
payment:
  volumes: [{name: processor-ledger, emptyDir: {}}]
  mounts: [{name: processor-ledger, mountPath: /home/nonroot/data}]
{{- end -}}

{{/* The enabled services a service calls, as a JSON list. Takes (dict "root" $ "name" "order"). */}}
{{- define "shopmesh.callees" -}}
{{- $enabled := include "shopmesh.serviceNames" .root | fromJsonArray -}}
{{- $out := list -}}
{{- range (get .root.Values.services .name).calls | default list -}}
{{- if has . $enabled -}}{{- $out = append $out . -}}{{- end -}}
{{- end -}}
{{- $out | toJson -}}
{{- end -}}

{{/* The enabled services that call a service, as a JSON list. Takes (dict "root" $ "name" "user"). */}}
{{- define "shopmesh.callers" -}}
{{- $out := list -}}
{{- range $caller := include "shopmesh.serviceNames" .root | fromJsonArray -}}
{{- if has $.name ((get $.root.Values.services $caller).calls | default list) -}}{{- $out = append $out $caller -}}{{- end -}}
{{- end -}}
{{- $out | toJson -}}
{{- end -}}

{{/*
The security contexts are values (defaults.podSecurityContext, defaults.securityContext, per
service, migration.*, postgresql.*), kept within the restricted Pod Security Standard by the
schema; runAsUser, runAsGroup and fsGroup may be unset (null) where the platform assigns them
(OpenShift's restricted SCC).
*/}}

{{/* Whether mTLS is on: "true" or "" (`auto`, the old default, means true: it no longer needs cert-manager). */}}
{{- define "shopmesh.tlsEnabled" -}}
{{- if has (toString .Values.tls.enabled) (list "true" "auto") -}}true{{- end -}}
{{- end -}}

{{/* Whether cert-manager issues the certificates: "true" or "" (certManager.enabled auto = the cluster serves cert-manager.io/v1). */}}
{{- define "shopmesh.certManager" -}}
{{- $v := toString .Values.tls.certManager.enabled -}}
{{- if and (include "shopmesh.tlsEnabled" .) (or (eq $v "true") (and (eq $v "auto") (.Capabilities.APIVersions.Has "cert-manager.io/v1"))) -}}true{{- end -}}
{{- end -}}

{{/*
Whether one service's pods get their certificate from the chart's own CA, signed at start by
their init container: "true" or "". Takes (dict "root" $ "name" "user"). True with mTLS on,
cert-manager not issuing, and no Secret of yours named in tls.secretNames.<name>.
*/}}
{{- define "shopmesh.chartIssued" -}}
{{- if and (include "shopmesh.tlsEnabled" .root) (not (include "shopmesh.certManager" .root)) (not (get .root.Values.tls.secretNames .name)) -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding the chart's mesh CA (tls.crt, tls.key): tls.chartCA.existingSecret or the one the chart makes. */}}
{{- define "shopmesh.meshCASecret" -}}
{{- default (printf "%s-mesh-ca" (include "shopmesh.fullname" .)) .Values.tls.chartCA.existingSecret -}}
{{- end -}}

{{/*
The mesh CA the chart makes (no existingSecret): the one its Secret already holds (lookup, so
identities survive upgrades), else a new Ed25519 key (PKCS#8, which the issuer reads) and a
self-signed CA certificate. "bundle" is the CAs the services trust (the Secret's ca.crt): kept
as found, so a rotation's old + new CA stays; a new CA's own certificate otherwise. Computed once
per rendering. Returns JSON {"crt": PEM, "key": PEM, "bundle": PEM}.
*/}}
{{- define "shopmesh.meshCA" -}}
{{- if not (hasKey .Values "__shopmeshMeshCA") -}}
{{- $existing := (lookup "v1" "Secret" .Release.Namespace (include "shopmesh.meshCASecret" .)) | default dict -}}
{{- $data := $existing.data | default dict -}}
{{- $ca := dict -}}
{{- if and (hasKey $data "tls.crt") (hasKey $data "tls.key") -}}
{{- $crt := get $data "tls.crt" | b64dec -}}
{{- $ca = dict "crt" $crt "key" (get $data "tls.key" | b64dec) "bundle" (get $data "ca.crt" | default (b64enc $crt) | b64dec) -}}
{{- else -}}
{{- $key := genPrivateKey "ed25519" -}}
{{- $cert := genCAWithKey (printf "shopmesh mesh CA (%s/%s)" .Release.Namespace .Release.Name) (int .Values.tls.chartCA.caDays) $key -}}
{{- $ca = dict "crt" $cert.Cert "key" $cert.Key "bundle" $cert.Cert -}}
{{- end -}}
{{- $_ := set .Values "__shopmeshMeshCA" $ca -}}
{{- end -}}
{{- get .Values "__shopmeshMeshCA" | toJson -}}
{{- end -}}

{{/* Whether any service's pods are issued by the chart's CA: "true" or "". */}}
{{- define "shopmesh.anyChartIssued" -}}
{{- range $name := include "shopmesh.serviceNames" . | fromJsonArray -}}
{{- if include "shopmesh.chartIssued" (dict "root" $ "name" $name) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the edge's mesh certificate (tls.crt, tls.key, ca.crt), which the Ingress presents to the services. */}}
{{- define "shopmesh.edgeTlsSecret" -}}
{{- default (printf "%s-edge-tls" (include "shopmesh.fullname" .)) .Values.tls.secretNames.edge -}}
{{- end -}}

{{/* Whether the authorization policy is enforced: "true" or "" (auto = whenever mTLS is on). */}}
{{- define "shopmesh.authzEnabled" -}}
{{- $v := toString .Values.authz.enabled -}}
{{- if or (eq $v "true") (and (eq $v "auto") (include "shopmesh.tlsEnabled" .)) -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding one service's tls.crt, tls.key and ca.crt. Takes (dict "root" $ "name" "user"). */}}
{{- define "shopmesh.tlsSecret" -}}
{{- default (printf "%s-tls" (include "shopmesh.componentName" .)) (get .root.Values.tls.secretNames .name) -}}
{{- end -}}

{{/* The SPIFFE ID of a service account, in the release's namespace or "ns". Takes (dict "root" $ "sa" "shopmesh-order" ["ns" "other"]). */}}
{{- define "shopmesh.spiffeId" -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .root.Values.tls.trustDomain (default .root.Release.Namespace .ns) .sa -}}
{{- end -}}

{{/* The port the kubelet's probes and `helm test` ask: the plaintext probe port with TLS on, else the gRPC port. */}}
{{- define "shopmesh.probePort" -}}
{{- if include "shopmesh.tlsEnabled" .root -}}{{ .root.Values.tls.probePort }}{{- else -}}{{ (get .root.Values.services .name).port }}{{- end -}}
{{- end -}}

{{/* The authorization policy as JSON, each caller rendered with tpl (namespace, trust domain, names). */}}
{{- define "shopmesh.authzPolicy" -}}
{{- $root := . -}}
{{- $rules := list -}}
{{- range .Values.authz.policy.rules -}}
{{- $callers := list -}}
{{- range .callers -}}
{{- $callers = append $callers (tpl . $root) -}}
{{- end -}}
{{- $rules = append $rules (dict "description" (default "" .description) "callers" $callers "methods" .methods) -}}
{{- end -}}
{{- /* Each caller admitted by values gets a rule of its own, for exactly the methods listed. */ -}}
{{- range .Values.callers -}}
{{- $id := include "shopmesh.spiffeId" (dict "root" $root "ns" .namespace "sa" .serviceAccount) -}}
{{- $rules = append $rules (dict "description" (printf "Caller %s (values: callers), service account %s/%s." .name .namespace .serviceAccount) "callers" (list $id) "methods" .methods) -}}
{{- end -}}
{{- $policy := dict "rules" $rules -}}
{{- /* With tokens on, the edge acts for end users: every call of its must carry the user's token
(leaving it out must never give more than sending one). With tokens off it is trusted as the mesh. */ -}}
{{- if .Values.jwt.jwks -}}
{{- $_ := set $policy "edges" (list (include "shopmesh.spiffeId" (dict "root" . "sa" .Values.edge.identity))) -}}
{{- end -}}
{{- $policy | toPrettyJson -}}
{{- end -}}

{{/*
What the policy lets the edge (SPIFFE ID of edge.identity) call, per enabled service:
{"<service>": ["/pkg.Service/*" or "/pkg.Service/Method", …]}, services without any left out.
These are the public services: the edge's routes, Ingress paths and NetworkPolicy follow them.
*/}}
{{- define "shopmesh.edgeMethods" -}}
{{- $edge := include "shopmesh.spiffeId" (dict "root" . "sa" .Values.edge.identity) -}}
{{- $policy := include "shopmesh.authzPolicy" . | fromJson -}}
{{- $out := dict -}}
{{- range $name := include "shopmesh.serviceNames" . | fromJsonArray -}}
{{- $prefix := printf "/%s/" (include "shopmesh.grpcService" (dict "root" $ "name" $name)) -}}
{{- $methods := list -}}
{{- range $policy.rules -}}
{{- if has $edge .callers -}}
{{- range .methods -}}
{{- if hasPrefix $prefix . -}}{{- $methods = append $methods . -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $methods -}}{{- $_ := set $out $name (uniq $methods) -}}{{- end -}}
{{- end -}}
{{- $out | toJson -}}
{{- end -}}

{{/*
Refuses an edge (Ingress or GRPCRoute) that would reach a service whose callers have no identity:
with mTLS on, the edge must present the mesh certificate (the Ingress does, the chart configures
it; a Gateway must say so); with mTLS off, every public service must require a bearer token.
*/}}
{{- define "shopmesh.checkEdge" -}}
{{- if or .Values.ingress.enabled .Values.gateway.enabled -}}
{{- $public := include "shopmesh.edgeMethods" . | fromJson -}}
{{- if not $public -}}
{{- fail (printf "ingress/gateway enabled, but the authorization policy lets the edge (%s) call nothing: add a rule for it to authz.policy" (include "shopmesh.spiffeId" (dict "root" . "sa" .Values.edge.identity))) -}}
{{- end -}}
{{- if include "shopmesh.tlsEnabled" . -}}
{{- if and .Values.gateway.enabled (not .Values.gateway.presentsMeshCertificate) -}}
{{- fail (printf "gateway.enabled with mTLS on: the services accept only callers with a mesh certificate, and the GRPCRoutes would reach %s with none. Configure your Gateway to present Secret %s to the backends and set gateway.presentsMeshCertificate=true" (keys $public | sortAlpha | join ", ") (include "shopmesh.edgeTlsSecret" .)) -}}
{{- end -}}
{{- if and (not (include "shopmesh.certManager" .)) (not .Values.tls.secretNames.edge) -}}
{{- fail (printf "ingress/gateway enabled with mTLS from the chart's own CA: the edge needs a mesh certificate in a Secret (SPIFFE ID %s), which Helm cannot write. Use cert-manager (tls.certManager.enabled=true), or issue one from the CA in Secret %s with `shopmesh issue-certificate`, store it as a Secret and name it in tls.secretNames.edge (docs/security.md)" (include "shopmesh.spiffeId" (dict "root" . "sa" .Values.edge.identity)) (include "shopmesh.meshCASecret" .)) -}}
{{- end -}}
{{- if not (include "shopmesh.authzEnabled" .) -}}
{{- fail "ingress/gateway enabled with mTLS on but authz.enabled false: any certificate of the mesh could call every method from the edge; turn the authorization policy on" -}}
{{- end -}}
{{- else -}}
{{- range $name := keys $public | sortAlpha -}}
{{- $svc := include "shopmesh.settings" (dict "root" $ "name" $name) | fromYaml -}}
{{- if or (not $.Values.jwt.jwks) (ne $svc.jwtRequire "unidentified") -}}
{{- fail (printf "ingress/gateway enabled, mTLS off: the edge would reach the %s service, whose callers would have neither an mTLS identity nor a required bearer token. Turn mTLS on (tls.enabled), or set jwt.jwks/issuer/audience and keep services.%s.jwtRequire=unidentified" $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Refuses bearer tokens without mTLS where services call each other: tokens identify callers from
outside the mesh, and a service's calls to another carry none, so each such call would fail
(with `jwtRequire: unidentified`) or the callee would take calls from anyone (`never`, a
writable catalog). Service-to-service calls are authenticated by mTLS only.
*/}}
{{- define "shopmesh.checkTokenOnly" -}}
{{- if and .Values.jwt.jwks (not (include "shopmesh.tlsEnabled" .)) -}}
{{- $calls := list -}}
{{- range $name := include "shopmesh.serviceNames" . | fromJsonArray -}}
{{- range $callee := include "shopmesh.callees" (dict "root" $ "name" $name) | fromJsonArray -}}
{{- $calls = append $calls (printf "%s -> %s" $name $callee) -}}
{{- end -}}
{{- end -}}
{{- if $calls -}}
{{- fail (printf "jwt.jwks is set with tls.enabled=false: bearer tokens identify callers from outside the mesh, but service-to-service calls (%s) carry no token and need mTLS. Set tls.enabled=true (the chart's own CA needs nothing else), keeping jwt.* for the edge" (join ", " $calls)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The callers of other teams (values: callers) that may call a service, as a JSON list of the
NetworkPolicyPeers admitting their pods: the caller's namespace, its pods or those podSelector
matches. A caller belongs to a service when one of its methods is that service's. Takes (dict
"root" $ "name" "order").
*/}}
{{- define "shopmesh.outsideCallers" -}}
{{- $prefix := printf "/%s/" (include "shopmesh.grpcService" .) -}}
{{- $out := list -}}
{{- range .root.Values.callers -}}
{{- $mine := false -}}
{{- range .methods -}}{{- if hasPrefix $prefix . -}}{{- $mine = true -}}{{- end -}}{{- end -}}
{{- if $mine -}}
{{- $out = append $out (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .namespace)) "podSelector" (.podSelector | default dict)) -}}
{{- end -}}
{{- end -}}
{{- $out | toJson -}}
{{- end -}}

{{/*
Refuses a caller (values: callers) whose methods name no enabled service: the services load the
policy at start and refuse one naming a service they do not know, and such a caller would be
admitted by no NetworkPolicy. Names must be unique (they name its Certificate).
*/}}
{{- define "shopmesh.checkCallers" -}}
{{- $known := list -}}
{{- range $name := include "shopmesh.serviceNames" . | fromJsonArray -}}
{{- $known = append $known (include "shopmesh.grpcService" (dict "root" $ "name" $name)) -}}
{{- end -}}
{{- $seen := list -}}
{{- range .Values.callers -}}
{{- if has .name $seen -}}
{{- fail (printf "callers: %s is listed twice; each caller needs a name of its own" .name) -}}
{{- end -}}
{{- $seen = append $seen .name -}}
{{- $caller := . -}}
{{- range .methods -}}
{{- $svc := regexReplaceAll "^/([^/]+)/.*$" . "${1}" -}}
{{- if not (has $svc $known) -}}
{{- fail (printf "callers: %s may call %s, but %s is not a service of this release (enabled: %s): every service would refuse the policy at start" $caller.name . $svc (join ", " $known)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The pod-level extension points every workload takes (Deployments, the migration Job, PostgreSQL). */}}
{{- define "shopmesh.extensionKeys" -}}
["podAnnotations","podLabels","nodeSelector","tolerations","affinity","priorityClassName","serviceAccount","extraEnv","envFrom","extraVolumes","extraVolumeMounts","extraContainers","podSecurityContext","securityContext"]
{{- end -}}

{{/*
The migration Job's settings: the extension points of `defaults` (a cloud-sql-proxy or a node pool
the services need, the Job needs too), then `migration`'s own over them. Returns YAML.
*/}}
{{- define "shopmesh.migrationSettings" -}}
{{- $base := dict -}}
{{- range include "shopmesh.extensionKeys" . | fromJsonArray -}}
{{- if hasKey $.Values.defaults . -}}{{- $_ := set $base . (deepCopy (get $.Values.defaults .)) -}}{{- end -}}
{{- end -}}
{{- mergeOverwrite $base (deepCopy (.Values.migration | default dict)) | toYaml -}}
{{- end -}}

{{/* Scheduling of a pod from its settings: priorityClassName, nodeSelector, tolerations, affinity. Takes the settings dict. */}}
{{- define "shopmesh.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
extraContainers as native sidecars (Kubernetes 1.29+): init containers with restartPolicy Always
start before the ones after them and are stopped once the main containers exit, so a Job with a
sidecar (cloud-sql-proxy; Istio injects its proxy the same way with native sidecars on)
completes. Takes the list; returns YAML list items.
*/}}
{{- define "shopmesh.sidecars" -}}
{{- range . }}
- {{ mergeOverwrite (dict "restartPolicy" "Always") (deepCopy .) | toYaml | nindent 2 | trim }}
{{- end }}
{{- end -}}
