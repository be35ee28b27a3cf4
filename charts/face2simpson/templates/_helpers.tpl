{{/* Chart name, overridable. */}}
{{- define "face2simpson.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name of the operator's objects. */}}
{{- define "face2simpson.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s-operator" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "face2simpson.selectorLabels" -}}
app.kubernetes.io/name: {{ include "face2simpson.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "face2simpson.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "face2simpson.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: face2simpson
{{- end }}

{{- define "face2simpson.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "face2simpson.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
What the operator calls, verb by verb (docs/operator.md explains each one). The same rules go
into a ClusterRole or into one Role per watched namespace.
*/}}
{{- define "face2simpson.rules" -}}
- apiGroups: ["face2simpson.io"]
  resources: ["simpsonmodels"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["face2simpson.io"]
  resources: ["simpsonmodels/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["list", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Leader election (docs/operator.md): read and renew the release's Lease (`resourceNames` pins
get and update to it; create cannot be pinned, the name is not known before the object), and
record the LeaderElection event on it.
*/}}
{{/* The leader-election Role and RoleBinding, within 63 characters like every name here. */}}
{{- define "face2simpson.leaderElectionName" -}}
{{- printf "%s-leader-election" (include "face2simpson.fullname" . | trunc 46 | trimSuffix "-") }}
{{- end }}

{{- define "face2simpson.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ include "face2simpson.fullname" . | quote }}]
  verbs: ["get", "update"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
