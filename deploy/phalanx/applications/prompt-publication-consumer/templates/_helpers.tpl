{{/*
Expand the name of the chart.
*/}}
{{- define "prompt-publication-consumer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name. Truncated at 63 characters because some Kubernetes
name fields are limited to this (by the DNS naming spec).
*/}}
{{- define "prompt-publication-consumer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "prompt-publication-consumer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "prompt-publication-consumer.labels" -}}
helm.sh/chart: {{ include "prompt-publication-consumer.chart" . }}
{{ include "prompt-publication-consumer.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "prompt-publication-consumer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "prompt-publication-consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Python log level names as the Rust filter spells them.
*/}}
{{- define "prompt-publication-consumer.logLevel" -}}
{{- $level := lower .Values.logLevel }}
{{- if eq $level "warning" }}warn{{ else if eq $level "critical" }}error{{ else }}{{ $level }}{{ end }}
{{- end }}

{{/*
Application metrics events to Sasquatch: the KafkaAccess, and its Secret, that the access
operator writes with the metrics broker's address, protocol and the KafkaUser's certificate.
*/}}
{{- define "prompt-publication-consumer.appMetricsName" -}}
{{- printf "%s-app-metrics" (include "prompt-publication-consumer.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Where the KafkaAccess secret's certificate and key are mounted in the consumer's container.
*/}}
{{- define "prompt-publication-consumer.appMetricsDirectory" -}}
/app/sasquatch-kafka
{{- end }}

{{/*
The consumer's metrics-event variables: METRICS_ENABLED always, the rest when enabled:
Sasquatch's Kafka from the KafkaAccess secret, its files mounted from that secret (the
deployment's `app-metrics` volume).
*/}}
{{- define "prompt-publication-consumer.appMetricsEnv" -}}
- name: METRICS_ENABLED
  value: {{ ternary "true" "false" .Values.appMetrics.enabled | quote }}
{{- if .Values.appMetrics.enabled }}
{{- $secret := include "prompt-publication-consumer.appMetricsName" . }}
{{- $directory := include "prompt-publication-consumer.appMetricsDirectory" . }}
- name: METRICS_APPLICATION
  value: {{ .Values.appMetrics.application | quote }}
- name: METRICS_EVENTS_TOPIC_PREFIX
  value: {{ .Values.appMetrics.topicPrefix | quote }}
- name: SCHEMA_MANAGER_REGISTRY_URL
  value: {{ .Values.appMetrics.schemaManager.registryUrl | quote }}
- name: SCHEMA_MANAGER_SUFFIX
  value: {{ .Values.appMetrics.schemaManager.suffix | quote }}
- name: METRICS_KAFKA_BOOTSTRAP_SERVERS
  valueFrom:
    secretKeyRef:
      name: {{ $secret | quote }}
      key: bootstrapServers
- name: METRICS_KAFKA_SECURITY_PROTOCOL
  valueFrom:
    secretKeyRef:
      name: {{ $secret | quote }}
      key: securityProtocol
- name: METRICS_KAFKA_CLUSTER_CA_PATH
  value: "{{ $directory }}/ca.crt"
- name: METRICS_KAFKA_CLIENT_CERT_PATH
  value: "{{ $directory }}/user.crt"
- name: METRICS_KAFKA_CLIENT_KEY_PATH
  value: "{{ $directory }}/user.key"
{{- end }}
{{- end }}
