{{/* The labels every object of the chart carries besides its own. */}}
{{- define "depproxy.labels" -}}
app.kubernetes.io/name: depproxy-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
