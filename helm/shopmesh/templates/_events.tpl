{{/*
Events (docs/events.md): which broker the services use, the chart's own NATS, what each service
publishes and consumes. The broker is one of: the chart's NATS (nats.enabled), events.existingSecret
(a URL with credentials), events.url, or none.
*/}}

{{/* The services that publish or consume events, whatever the broker. */}}
{{- define "shopmesh.eventServiceNames" -}}
["inventory","notification","order"]
{{- end -}}

{{/*
The durable consumers each service runs, as the Rust side names them ({"svc": [[stream, durable], …]}):
what KEDA's nats-jetstream scaler reads the lag of.
*/}}
{{- define "shopmesh.eventConsumers" -}}
{"inventory": [["SHOPMESH_ORDER", "inventory-order"]], "notification": [["SHOPMESH_ORDER", "notification-order"], ["SHOPMESH_INVENTORY", "notification-inventory"]], "order": [["SHOPMESH_INVENTORY", "order-fulfilment"]]}
{{- end -}}

{{/* Where the services' broker is: "chart", "secret", "url" or "" (none). */}}
{{- define "shopmesh.eventsBroker" -}}
{{- if .Values.nats.enabled -}}chart
{{- else if .Values.events.existingSecret -}}secret
{{- else if ne (toString .Values.events.url) "none" -}}url
{{- end -}}
{{- end -}}

{{- define "shopmesh.natsName" -}}
{{- printf "%s-nats" (include "shopmesh.fullname" .) -}}
{{- end -}}

{{/* The Secret with the NATS user's password: nats.existingSecret or the chart's. */}}
{{- define "shopmesh.natsSecret" -}}
{{- default (include "shopmesh.natsName" .) .Values.nats.existingSecret -}}
{{- end -}}

{{/* The password the chart generates for NATS: the one its Secret holds (lookup), else a new one (URL-safe). */}}
{{- define "shopmesh.natsPassword" -}}
{{- $existing := (lookup "v1" "Secret" .Release.Namespace (include "shopmesh.natsName" .)) | default dict -}}
{{- with ($existing.data | default dict).password -}}{{ b64dec . }}{{- else -}}{{ randAlphaNum 32 }}{{- end -}}
{{- end -}}

{{/* Replicas of each stream: events.streamReplicas, or (0) nats.replicas with the chart's NATS, else 1. */}}
{{- define "shopmesh.streamReplicas" -}}
{{- if .Values.events.streamReplicas -}}{{ .Values.events.streamReplicas }}
{{- else if .Values.nats.enabled -}}{{ .Values.nats.replicas }}
{{- else -}}1
{{- end -}}
{{- end -}}

{{/* The host:port of the chart's NATS servers' monitoring (the headless name: KEDA prefixes a server's name to it to ask a stream's leader). */}}
{{- define "shopmesh.natsMonitoringEndpoint" -}}
{{- printf "%s:8222" (include "shopmesh.fqdn" (dict "root" . "service" (printf "%s-headless" (include "shopmesh.natsName" .))) | trimSuffix ".") -}}
{{- end -}}

{{/*
Refuses what would leave events with no broker or two: the consumers (inventory, notification)
with none, which would never receive an event; a URL besides the chart's NATS or a Secret; more
stream replicas than the chart's NATS has servers.
*/}}
{{- define "shopmesh.checkEvents" -}}
{{- $broker := include "shopmesh.eventsBroker" . -}}
{{- $set := list -}}
{{- if .Values.nats.enabled -}}{{- $set = append $set "nats.enabled" -}}{{- end -}}
{{- if .Values.events.existingSecret -}}{{- $set = append $set "events.existingSecret" -}}{{- end -}}
{{- if ne (toString .Values.events.url) "none" -}}{{- $set = append $set "events.url" -}}{{- end -}}
{{- if gt (len $set) 1 -}}
{{- fail (printf "%s are set together: the services use one broker. Keep one (events.url none when the chart deploys NATS)" (join " and " $set)) -}}
{{- end -}}
{{- if not $broker -}}
{{- range list "inventory" "notification" -}}
{{- if has . (include "shopmesh.serviceNames" $ | fromJsonArray) -}}
{{- fail (printf "services.%s is enabled but events.url is none and nats.enabled is false: it consumes the order events from NATS JetStream. Set nats.enabled=true (the chart deploys NATS), events.url to your NATS URL or events.existingSecret, or services.%s.enabled=false" . .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.nats.enabled (gt (int .Values.events.streamReplicas) (int .Values.nats.replicas)) -}}
{{- fail (printf "events.streamReplicas (%v) is above nats.replicas (%v): JetStream cannot place a stream on more servers than there are, and the services would not start" .Values.events.streamReplicas .Values.nats.replicas) -}}
{{- end -}}
{{- end -}}

{{/*
One service's broker variables (services that publish or consume events only): the chart's NATS
as a URL the kubelet composes from the Secret's password (dependent-variable expansion; no URL
with a password is rendered), your Secret's URL, or events.url. Takes (dict "root" $ "name" "order").
*/}}
{{- define "shopmesh.eventsEnv" -}}
{{- $root := .root -}}
{{- if has .name (include "shopmesh.eventServiceNames" . | fromJsonArray) -}}
{{- $broker := include "shopmesh.eventsBroker" $root -}}
{{- if eq $broker "chart" }}
{{- /* No SHOPMESH_ prefix: the binary never reads it; only the kubelet does, expanding it into the URL below. */}}
- name: EVENTS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "shopmesh.natsSecret" $root }}, key: password}}
- name: SHOPMESH_EVENTS_URL
  value: {{ printf "nats://%s:$(EVENTS_PASSWORD)@%s:4222" $root.Values.nats.user (include "shopmesh.fqdn" (dict "root" $root "service" (include "shopmesh.natsName" $root))) | quote }}
{{- else if eq $broker "secret" }}
- name: SHOPMESH_EVENTS_URL
  valueFrom: {secretKeyRef: {name: {{ $root.Values.events.existingSecret }}, key: events-url}}
{{- else }}
- name: SHOPMESH_EVENTS_URL
  value: {{ $root.Values.events.url | quote }}
{{- end }}
{{- if $broker }}
- name: SHOPMESH_EVENTS_REPLICAS
  value: {{ include "shopmesh.streamReplicas" $root | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The port of the external broker: that of events.url, else networkPolicy.events.port. */}}
{{- define "shopmesh.eventsPort" -}}
{{- $host := "" -}}
{{- if eq (include "shopmesh.eventsBroker" .) "url" -}}{{- $host = (urlParse .Values.events.url).host -}}{{- end -}}
{{- if contains ":" $host -}}{{ splitList ":" $host | last }}{{- else -}}{{ .Values.networkPolicy.events.port }}{{- end -}}
{{- end -}}

{{/* The chart's NATS server's config file (nats.yaml's ConfigMap); its hash rolls the servers when it changes. */}}
{{- define "shopmesh.natsConfig" -}}
{{- $name := include "shopmesh.natsName" . -}}
{{- $headless := printf "%s-headless" $name -}}
server_name: $SERVER_NAME
port: 4222
http_port: 8222
pid_file: /var/run/nats/nats.pid
# Stopping (the preStop hook), a server first stops taking clients and lets them move to its
# peers over lame_duck_duration (lame duck mode).
lame_duck_grace_period: 10s
lame_duck_duration: 30s
jetstream {
  store_dir: /data
}
authorization {
  users: [
    {user: {{ $.Values.nats.user | quote }}, password: $NATS_PASSWORD}
  ]
}
{{- if gt (int .Values.nats.replicas) 1 }}
cluster {
  name: {{ $name | quote }}
  port: 6222
  routes: [
    {{- range $i := until (int .Values.nats.replicas) }}
    nats://{{ $name }}-{{ $i }}.{{ include "shopmesh.fqdn" (dict "root" $ "service" $headless) | trimSuffix "." }}:6222
    {{- end }}
  ]
}
{{- end }}
{{- end -}}

{{/*
A service's egress rule to the broker, if it uses events and there is one: the chart's NATS by
its pod labels, else the external broker's port (networkPolicy.events.to, or any address).
Takes (dict "root" $ "name" "order"); returns a NetworkPolicyEgressRule list (YAML), or nothing.
*/}}
{{- define "shopmesh.eventsEgress" -}}
{{- $broker := include "shopmesh.eventsBroker" .root -}}
{{- if and $broker (has .name (include "shopmesh.eventServiceNames" . | fromJsonArray)) -}}
{{- if eq $broker "chart" -}}
# The chart's NATS (events).
- to:
    - podSelector:
        matchLabels:
          {{- include "shopmesh.selectorLabels" (dict "root" .root "name" "nats") | nindent 10 }}
  ports:
    - {port: 4222, protocol: TCP}
{{- else -}}
# The external NATS (events); no `to` means any address, on this port only.
- ports:
    - {port: {{ include "shopmesh.eventsPort" .root }}, protocol: TCP}
  {{- with .root.Values.networkPolicy.events.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
KEDA's nats-jetstream triggers of one service: one per durable consumer it runs, on that
consumer's pending events, read from the broker's monitoring endpoint (the chart's NATS, or
events.monitoringEndpoint). Nothing without a broker or an endpoint. Takes (dict "root" $ "name"
"inventory" "threshold" "100"); returns YAML list items.
*/}}
{{- define "shopmesh.eventsTriggers" -}}
{{- $root := .root -}}
{{- $broker := include "shopmesh.eventsBroker" $root -}}
{{- $endpoint := ternary (include "shopmesh.natsMonitoringEndpoint" $root) $root.Values.events.monitoringEndpoint (eq $broker "chart") -}}
{{- $consumers := get (include "shopmesh.eventConsumers" . | fromJson) .name | default list -}}
{{- if and $broker $endpoint $consumers -}}
# Events waiting for this service's consumers (each JetStream consumer's pending count).
{{- range $consumers }}
- type: nats-jetstream
  metadata:
    natsServerMonitoringEndpoint: {{ $endpoint | quote }}
    account: {{ ternary "$G" $root.Values.events.account (eq $broker "chart") | quote }}
    stream: {{ index . 0 | quote }}
    consumer: {{ index . 1 | quote }}
    lagThreshold: {{ $.threshold | quote }}
{{- end }}
{{- end -}}
{{- end -}}
