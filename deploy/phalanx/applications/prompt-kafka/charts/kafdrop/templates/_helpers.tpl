{{/*
Name of Kafdrop's resources: the release name, or release and chart names joined.
*/}}
{{- define "kafdrop.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Labels selecting Kafdrop's pods.
*/}}
{{- define "kafdrop.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of every Kafdrop resource.
*/}}
{{- define "kafdrop.labels" -}}
helm.sh/chart: {{ .Chart.Name }}
{{ include "kafdrop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
