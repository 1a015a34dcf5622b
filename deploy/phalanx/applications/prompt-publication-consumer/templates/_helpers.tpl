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
