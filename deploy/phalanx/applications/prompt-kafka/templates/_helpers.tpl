{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "prompt-kafka.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of the chart's own resources.
*/}}
{{- define "prompt-kafka.labels" -}}
helm.sh/chart: {{ include "prompt-kafka.chart" . }}
app.kubernetes.io/name: "prompt-kafka"
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
