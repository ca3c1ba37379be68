{{/* The name every object of a release shares: the release name. */}}
{{- define "celery-operator.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "celery-operator.serviceAccountName" -}}
{{- default (include "celery-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "celery-operator.selectorLabels" -}}
app.kubernetes.io/name: celery-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "celery-operator.labels" -}}
{{ include "celery-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
