{{/*
Expand the name of the chart.
*/}}
{{- define "butler-writer-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name. Truncated at 63 characters because some Kubernetes
name fields are limited to this (by the DNS naming spec).
*/}}
{{- define "butler-writer-service.fullname" -}}
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
{{- define "butler-writer-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "butler-writer-service.labels" -}}
helm.sh/chart: {{ include "butler-writer-service.chart" . }}
{{ include "butler-writer-service.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "butler-writer-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "butler-writer-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Python log level names as the Rust writer's filter spells them.
*/}}
{{- define "butler-writer-service.logLevel" -}}
{{- $level := lower .Values.logLevel }}
{{- if eq $level "warning" }}warn{{ else if eq $level "critical" }}error{{ else }}{{ $level }}{{ end }}
{{- end }}
