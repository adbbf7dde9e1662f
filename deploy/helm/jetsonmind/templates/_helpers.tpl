{{- define "jetsonmind.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "jetsonmind.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: node or nats. */}}
{{- define "jetsonmind.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "jetsonmind.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "jetsonmind.secretName" -}}
{{- if .Values.auth.existingSecret -}}
{{ .Values.auth.existingSecret }}
{{- else -}}
{{- $_ := required "set auth.clientKey (jm_<id>_<secret>: deploy/compose/new-env.sh makes one) or auth.existingSecret" .Values.auth.clientKey -}}
{{ include "jetsonmind.fullname" . }}-keys
{{- end -}}
{{- end -}}

{{/* The NATS servers the nodes connect to, as a TOML array. */}}
{{- define "jetsonmind.natsUrls" -}}
{{- if .Values.nats.enabled -}}
["nats://{{ include "jetsonmind.fullname" . }}-nats:4222"]
{{- else -}}
{{- if not .Values.nats.externalUrls -}}
{{- fail "nats.enabled is false: set nats.externalUrls" -}}
{{- end -}}
{{ .Values.nats.externalUrls | toJson }}
{{- end -}}
{{- end -}}

{{/* The gateway's Service, by every name a client in the cluster may use. */}}
{{- define "jetsonmind.allowedHosts" -}}
{{- $svc := include "jetsonmind.fullname" . -}}
{{- $hosts := list "localhost" "127.0.0.1" "::1" $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) -}}
{{- concat $hosts .Values.node.extraAllowedHosts | toJson -}}
{{- end -}}
