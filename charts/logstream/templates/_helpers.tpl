{{/*
Name of every object of the release: RELEASE-operator ("logstream-operator"
for a release named "logstream", the operator's default --webhook-service).
*/}}
{{- define "logstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "logstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of the operator's pods. */}}
{{- define "logstream.selectorLabels" -}}
app.kubernetes.io/name: logstream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "logstream.labels" -}}
{{ include "logstream.selectorLabels" . }}
app.kubernetes.io/part-of: logstream
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "logstream.chart" . }}
{{- end -}}

{{- define "logstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "logstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest; tag defaults to the appVersion. */}}
{{- define "logstream.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "logstream.operatorImage" -}}
{{- include "logstream.image" (list .Values.operator.image .) -}}
{{- end -}}

{{- define "logstream.dataPlaneImage" -}}
{{- include "logstream.image" (list .Values.logstream.image .) -}}
{{- end -}}

{{- define "logstream.certManager" -}}
{{- if eq .Values.webhook.tls.mode "certManager" -}}true{{- end -}}
{{- end -}}

{{/* Name of the cert-manager Certificate for the webhook. */}}
{{- define "logstream.certificateName" -}}
{{- printf "%s-webhook" (include "logstream.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
