{{/*
Annotations that keep Argo CD away from the brokers' and controllers' volumes: Strimzi makes the
claims, so Argo CD sees them as extraneous; without these a prune would delete them.
*/}}
{{- define "strimzi-kafka.pvcTemplate" -}}
persistentVolumeClaim:
  metadata:
    annotations:
      argocd.argoproj.io/compare-options: IgnoreExtraneous
      argocd.argoproj.io/sync-options: Prune=false
{{- end }}

{{/*
A persistent JBOD volume of a node pool: `size` and `storageClassName`.
*/}}
{{- define "strimzi-kafka.storage" -}}
type: jbod
volumes:
  - id: 0
    type: persistent-claim
    size: {{ .size }}
    {{- with .storageClassName }}
    class: {{ . }}
    {{- end }}
    deleteClaim: false
{{- end }}
