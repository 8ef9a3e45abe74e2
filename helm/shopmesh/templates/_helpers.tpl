{{/*
Name prefix of every object. Truncated to 40 characters so that the longest derived name,
"<prefix>-payment-headless", stays within the 63 characters of a DNS label.
*/}}
{{- define "shopmesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of one service's objects (Deployment, ServiceAccount, HPA, PDB, …). Takes (dict "root" $ "name" "user"). */}}
{{- define "shopmesh.componentName" -}}
{{- printf "%s-%s" (include "shopmesh.fullname" .root) .name -}}
{{- end -}}

{{/* The headless Service through which callers find every ready pod of a service. */}}
{{- define "shopmesh.headlessName" -}}
{{- printf "%s-%s-headless" (include "shopmesh.fullname" .root) .name -}}
{{- end -}}

{{/* Address of a service for callers inside the cluster: http://<headless>.<ns>.svc.<domain>:<port>. */}}
{{- define "shopmesh.serviceUrl" -}}
{{- $port := (get .root.Values.services .name).port -}}
{{- printf "http://%s.%s.svc.%s:%v" (include "shopmesh.headlessName" .) .root.Release.Namespace .root.Values.clusterDomain $port -}}
{{- end -}}

{{/* The gRPC service a service serves, which is also the health name its readiness answers for. */}}
{{- define "shopmesh.grpcService" -}}
{{- printf "shopmesh.%s.v1.%sService" .name (title .name) -}}
{{- end -}}

{{- define "shopmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: shopmesh
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{ include "shopmesh.selectorLabels" . }}
{{- end -}}

{{/* Labels that pick one service's pods (component = the service's name). */}}
{{- define "shopmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "shopmesh.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret the Deployments read the database URLs from. */}}
{{- define "shopmesh.databaseSecret" -}}
{{- default (printf "%s-database" (include "shopmesh.fullname" .)) .Values.database.existingSecret -}}
{{- end -}}

{{/* The data of the database Secrets the chart creates (the release's and the migration hook's). */}}
{{- define "shopmesh.databaseSecretData" -}}
{{- range $name, $_ := .Values.services }}
{{ $name }}-database-url: {{ required (printf "database.urls.%s is required unless database.existingSecret is set" $name) (get $.Values.database.urls $name) | b64enc | quote }}
{{- end }}
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
{{- toYaml $svc -}}
{{- end -}}

{{/* Restricted Pod Security Standard, pod level. */}}
{{- define "shopmesh.podSecurityContext" -}}
runAsNonRoot: true
# The distroless image's nonroot user, numeric so the kubelet can verify runAsNonRoot.
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Restricted Pod Security Standard, container level; the binary writes no files. */}}
{{- define "shopmesh.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The Secret holding one service's tls.crt, tls.key and ca.crt. Takes (dict "root" $ "name" "user"). */}}
{{- define "shopmesh.tlsSecret" -}}
{{- default (printf "%s-tls" (include "shopmesh.componentName" .)) (get .root.Values.tls.secretNames .name) -}}
{{- end -}}

{{/* The port the kubelet's probes and `helm test` ask: the plaintext probe port with TLS on, else the gRPC port. */}}
{{- define "shopmesh.probePort" -}}
{{- if .root.Values.tls.enabled -}}{{ .root.Values.tls.probePort }}{{- else -}}{{ (get .root.Values.services .name).port }}{{- end -}}
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
{{- dict "rules" $rules | toPrettyJson -}}
{{- end -}}
