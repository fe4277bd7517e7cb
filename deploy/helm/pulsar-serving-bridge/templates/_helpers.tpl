{{/* Names, labels and the TOML rendering of the bridge's config. */}}

{{- define "psb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "psb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "psb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "psb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "psb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "psb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "psb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "psb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
bridge.toml as the daemon reads it: the values under `bridge`, with observe.http_bind owned
by the chart (0.0.0.0, so the kubelet's probes and Prometheus reach it from outside the pod).
*/}}
{{- define "psb.bridgeConfig" -}}
{{- $observe := deepCopy (default dict .Values.bridge.observe) -}}
{{- if hasKey $observe "http_bind" -}}
{{- fail "set http.port instead of bridge.observe.http_bind: the chart binds 0.0.0.0:<http.port> so probes and scrapes reach the pod" -}}
{{- end -}}
{{- $_ := set $observe "http_bind" (printf "0.0.0.0:%d" (int .Values.http.port)) -}}
{{- $bridge := deepCopy .Values.bridge -}}
{{- $_ := set $bridge "observe" $observe -}}
{{- toJson $bridge -}}
{{- end -}}

{{/* The drain grace the daemon will use (the bridge's own default when unset). */}}
{{- define "psb.drainGraceSeconds" -}}
{{- $daemon := default dict .Values.bridge.daemon -}}
{{- ternary 30 $daemon.drain_grace_s (kindIs "invalid" $daemon.drain_grace_s) | float64 | ceil | int -}}
{{- end -}}

{{/*
TOML, because Helm's toToml writes every number from a values file as a float ("4.0"), which
the bridge's strict config model rejects for integer keys. Nested maps become inline tables
(`auth = { type = "token", ... }`), which TOML defines as the same data as a [section.sub]
table; a null value leaves its key out, the way `--set key=null` deletes a default.
*/}}
{{- define "psb.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "psb.toml.value" -}}
{{- if kindIs "map" . -}}
{{- $parts := list -}}
{{- range $k, $v := . -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $parts = append $parts (printf "%s = %s" (include "psb.toml.key" $k) (include "psb.toml.value" $v)) -}}
{{- end -}}
{{- end -}}
{{- if $parts -}}{ {{ join ", " $parts }} }{{- else -}}{}{{- end -}}
{{- else if kindIs "slice" . -}}
{{- $parts := list -}}
{{- range . -}}
{{- $parts = append $parts (include "psb.toml.value" .) -}}
{{- end -}}
[{{ join ", " $parts }}]
{{- else if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{ printf "%d" (int64 .) }}{{- else -}}{{ printf "%v" . }}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) -}}
{{- printf "%d" . -}}
{{- else -}}
{{- fail (printf "cannot write %v (%s) as TOML" . (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{/* A whole TOML document from a map: top-level scalars first, then one [section] per map. */}}
{{- define "psb.toml.document" -}}
{{- $top := list -}}
{{- $blocks := list -}}
{{- range $k, $v := . -}}
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v)) -}}
{{- $top = append $top (printf "%s = %s" (include "psb.toml.key" $k) (include "psb.toml.value" $v)) -}}
{{- end -}}
{{- end -}}
{{- if $top -}}{{- $blocks = append $blocks (join "\n" $top) -}}{{- end -}}
{{- range $section, $body := . -}}
{{- if kindIs "map" $body -}}
{{- $lines := list (printf "[%s]" (include "psb.toml.key" $section)) -}}
{{- range $k, $v := $body -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $lines = append $lines (printf "%s = %s" (include "psb.toml.key" $k) (include "psb.toml.value" $v)) -}}
{{- end -}}
{{- end -}}
{{- $blocks = append $blocks (join "\n" $lines) -}}
{{- end -}}
{{- end -}}
{{- join "\n\n" $blocks -}}
{{- end -}}

{{/* A route's name must be a file name the bridge reads and a ConfigMap key. */}}
{{- define "psb.routeKey" -}}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9_.-]*$" .) -}}
{{- fail (printf "route name %q: use letters, digits, '.', '_' and '-' (it becomes routes/<name>.toml)" .) -}}
{{- end -}}
{{- printf "route.%s.toml" . -}}
{{- end -}}

{{/* The Pulsar admin URL KEDA reads backlog from. */}}
{{- define "psb.kedaAdminURL" -}}
{{- $url := .Values.keda.adminURL | default (.Values.bridge.pulsar | default dict).admin_url -}}
{{- if not $url -}}
{{- fail "keda.enabled needs keda.adminURL or bridge.pulsar.admin_url (the Pulsar admin REST API)" -}}
{{- end -}}
{{- $url -}}
{{- end -}}
