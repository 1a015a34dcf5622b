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

{{/*
Application metrics events to Sasquatch: the KafkaAccess, and its Secret, that the access
operator writes with the metrics broker's address, protocol and the KafkaUser's certificate.
*/}}
{{- define "butler-writer-service.appMetricsName" -}}
{{- printf "%s-app-metrics" (include "butler-writer-service.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Where the KafkaAccess secret's certificate and key are mounted in the writer's container.
*/}}
{{- define "butler-writer-service.appMetricsDirectory" -}}
/app/sasquatch-kafka
{{- end }}

{{/*
The writer's metrics-event variables (the StatefulSet's; the replay Job sends no events).
METRICS_ENABLED always, the rest when enabled: Sasquatch's Kafka from the KafkaAccess secret,
its files mounted from that secret (the statefulset's `app-metrics` volume).
*/}}
{{- define "butler-writer-service.appMetricsEnv" -}}
- name: METRICS_ENABLED
  value: {{ ternary "true" "false" .Values.appMetrics.enabled | quote }}
{{- if .Values.appMetrics.enabled }}
{{- $secret := include "butler-writer-service.appMetricsName" . }}
{{- $directory := include "butler-writer-service.appMetricsDirectory" . }}
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

{{/*
The writer's environment, shared by the StatefulSet and the replay Job.
*/}}
{{- define "butler-writer-service.env" -}}
- name: BUTLER_REPOSITORY
  value: {{ .Values.outputRepo | quote }}
- name: KAFKA_CLUSTER
  value: {{ .Values.kafka.clusterAddress | quote }}
- name: KAFKA_TOPIC
  value: {{ .Values.kafka.topic | quote }}
- name: KAFKA_OUTPUT_TOPIC
  value: {{ .Values.kafka.outputTopic | quote }}
{{- if .Values.kafka.username }}
- name: KAFKA_USERNAME
  value: {{ .Values.kafka.username | quote }}
- name: KAFKA_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ template "butler-writer-service.fullname" . }}-secret
      key: butler-writer-password
{{- end }}
- name: KAFKA_DEBUG
  value: {{ ternary "1" "0" .Values.kafka.debug | quote }}
- name: OUTPUT_DATASET_LIST_DIRECTORY
  value: {{ .Values.outputDatasetListDirectory | quote }}
- name: WRITER_DEBUG_LEVEL
  value: {{ include "butler-writer-service.logLevel" . | quote }}
- name: BUTLER_WRITER_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: BUTLER_WRITER_GROUP_ID
  value: {{ .Values.kafka.groupId | quote }}
- name: BUTLER_WRITER_DEAD_LETTER_TOPIC
  value: {{ .Values.kafka.deadLetterTopic | quote }}
- name: BUTLER_WRITER_DELIVERY
  value: {{ .Values.kafka.delivery | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .Values.kafka.staticMembership }}
# A static group member named for its pod (KIP-345): a restarted pod takes its partitions back
# at once instead of after the session timeout. `butler-writer replay` ignores it.
- name: BUTLER_WRITER_GROUP_INSTANCE_ID
  value: "$(POD_NAME)"
{{- end }}
{{- if gt (int .Values.replicaCount) 1 }}
# Each writer needs its own transactional id: the pod's stable name makes it one.
- name: BUTLER_WRITER_TRANSACTIONAL_ID
  value: "{{ .Values.kafka.transactionalId }}-$(POD_NAME)"
{{- else }}
- name: BUTLER_WRITER_TRANSACTIONAL_ID
  value: {{ .Values.kafka.transactionalId | quote }}
{{- end }}
{{- with .Values.kafka.securityProtocol }}
- name: BUTLER_WRITER_KAFKA_SECURITY_PROTOCOL
  value: {{ . | quote }}
{{- end }}
- name: BUTLER_WRITER_BATCH_MAX_MESSAGES
  value: {{ .Values.batch.maxMessages | quote }}
- name: BUTLER_WRITER_BATCH_MAX_BYTES
  value: {{ .Values.batch.maxBytes | int64 | quote }}
- name: BUTLER_WRITER_BATCH_MAX_WAIT_MS
  value: {{ .Values.batch.maxWaitMs | quote }}
- name: BUTLER_WRITER_BATCH_EAGER
  value: {{ .Values.batch.eager | quote }}
- name: BUTLER_WRITER_DB_CONCURRENCY
  value: {{ .Values.database.concurrency | quote }}
- name: BUTLER_WRITER_DB_MAX_CONNECTIONS
  value: {{ .Values.database.maxConnections | quote }}
- name: BUTLER_WRITER_RETRY_INITIAL_MS
  value: {{ .Values.retry.initialMs | quote }}
- name: BUTLER_WRITER_RETRY_MAX_MS
  value: {{ .Values.retry.maxMs | quote }}
- name: BUTLER_WRITER_BREAKER_WINDOW
  value: {{ .Values.breaker.window | quote }}
- name: BUTLER_WRITER_BREAKER_MIN_MESSAGES
  value: {{ .Values.breaker.minMessages | quote }}
- name: BUTLER_WRITER_BREAKER_THRESHOLD
  value: {{ .Values.breaker.threshold | quote }}
- name: BUTLER_WRITER_BREAKER_COOLDOWN_SECONDS
  value: {{ .Values.breaker.cooldownSeconds | quote }}
- name: BUTLER_WRITER_SHUTDOWN_GRACE_SECONDS
  value: {{ .Values.shutdownGraceSeconds | quote }}
- name: BUTLER_WRITER_STALL_SECONDS
  value: {{ .Values.stallSeconds | quote }}
- name: BUTLER_WRITER_HTTP_ADDRESS
  value: "0.0.0.0:{{ .Values.metrics.port }}"
{{- with .Values.s3.endpointUrl }}
- name: S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: AWS_SHARED_CREDENTIALS_FILE
  value: /app/s3/credentials
{{- with .Values.s3.aws_profile }}
- name: AWS_PROFILE
  value: {{ . | quote }}
{{- end }}
- name: LSST_DB_AUTH
  value: /app/lsst-credentials/db-auth.yaml
{{- end }}
