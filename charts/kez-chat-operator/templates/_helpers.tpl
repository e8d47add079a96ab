{{/* The chart's name. */}}
{{- define "kez-chat-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name: the release's name, unless it already holds the chart's. */}}
{{- define "kez-chat-operator.fullname" -}}
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

{{- define "kez-chat-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "kez-chat-operator.labels" -}}
helm.sh/chart: {{ include "kez-chat-operator.chart" . }}
{{ include "kez-chat-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kez-chat
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "kez-chat-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kez-chat-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kez-chat-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kez-chat-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.create=false needs serviceAccount.name" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator's image, which is also the default image of every KezChat:
repository:tag, the tag defaulting to the chart's appVersion, or
repository@digest when a digest is set.
*/}}
{{- define "kez-chat-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The namespaces the operator manages KezChats in, comma-separated: empty
(every namespace) with rbac.scope cluster; rbac.watchNamespaces, or the
release's namespace, with rbac.scope namespace.
*/}}
{{- define "kez-chat-operator.watchNamespaces" -}}
{{- if eq .Values.rbac.scope "namespace" }}
{{- $nss := .Values.rbac.watchNamespaces | default (list .Release.Namespace) }}
{{- join "," (uniq $nss) }}
{{- end }}
{{- end }}
