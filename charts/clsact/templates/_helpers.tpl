{{/*
Helpers shared by the templates. Each mirrors a function of clsact.launch (named in its
comment) so that `helm template` and `clsact render` give the same objects for the same
values (tests/test_chart.py compares them).
*/}}

{{/* The release's resource names (ConfigMap of the nightly, CronJob, submitter RBAC). */}}
{{- define "clsact.fullname" -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* clsact.launch.names.job_name: <sanitised base>-<6 hex of sha256(operator/base)>.
     Takes (dict "base" BASE "operator" OPERATOR). */}}
{{- define "clsact.jobNameOf" -}}
{{- $suffix := printf "%s/%s" .operator .base | sha256sum | trunc 6 -}}
{{- $stem := regexReplaceAll "[^a-z0-9-]+" (lower .base) "-" | trimAll "-" -}}
{{- $stem = regexReplaceAll "-{2,}" $stem "-" -}}
{{- if not (regexMatch "^[a-z]" $stem) -}}
{{- $stem = printf "clsact-%s" $stem | trimSuffix "-" -}}
{{- end -}}
{{- $stem = trunc 41 $stem | trimSuffix "-" -}}
{{- printf "%s-%s" $stem $suffix -}}
{{- end -}}

{{/* The run's job name (mode job): from `name`, else the release name. */}}
{{- define "clsact.jobName" -}}
{{- include "clsact.jobNameOf" (dict "base" (.Values.name | default .Release.Name) "operator" .Values.operator) -}}
{{- end -}}

{{- define "clsact.chartLabel" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* clsact.launch.render.standard_labels (the user's labels; ours win), as JSON. */}}
{{- define "clsact.runLabels" -}}
{{- $name := include "clsact.jobName" . -}}
{{- $ours := dict "app.kubernetes.io/name" "clsact" "app.kubernetes.io/instance" $name "app.kubernetes.io/component" "compress" "app.kubernetes.io/managed-by" .Release.Service "app.kubernetes.io/version" .Chart.AppVersion "clsact.io/run-id" $name "helm.sh/chart" (include "clsact.chartLabel" .) -}}
{{- merge $ours (.Values.labels | default dict) | toJson -}}
{{- end -}}

{{/* Labels of the nightly's own objects (CronJob, its ConfigMap, the submitter RBAC). */}}
{{- define "clsact.nightlyLabels" -}}
{{- $ours := dict "app.kubernetes.io/name" "clsact" "app.kubernetes.io/instance" .Release.Name "app.kubernetes.io/component" "nightly" "app.kubernetes.io/managed-by" .Release.Service "app.kubernetes.io/version" .Chart.AppVersion "helm.sh/chart" (include "clsact.chartLabel" .) -}}
{{- merge $ours (.Values.labels | default dict) | toJson -}}
{{- end -}}

{{/* The compression config as a mapping (from `config`: a mapping or its text). */}}
{{- define "clsact.configMap" -}}
{{- $cfg := dict -}}
{{- if kindIs "string" .Values.config -}}
{{- $cfg = fromYaml .Values.config -}}
{{- if or (hasKey $cfg "Error") (not $cfg) -}}
{{- fail (printf "config: the text given (--set-file config=FILE) is not a YAML mapping of sections (Global, Distillation, QuantAware, TrainConfig)%s" (ternary (printf ": %v" (get $cfg "Error")) "" (hasKey $cfg "Error"))) -}}
{{- end -}}
{{- else if kindIs "map" .Values.config -}}
{{- $cfg = deepCopy .Values.config -}}
{{- end -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* Where the config comes from; fails when it comes from nowhere or from two places. */}}
{{- define "clsact.checkConfigSource" -}}
{{- if and .Values.config .Values.existingConfigMap -}}
{{- fail "set one of config (or --set-file config=FILE) and existingConfigMap, not both" -}}
{{- end -}}
{{- if not (or .Values.config .Values.existingConfigMap) -}}
{{- fail "no compression config: set config (a mapping), --set-file config=configs/mbv3_qat_dis.yaml, or existingConfigMap=NAME (key config.yaml)" -}}
{{- end -}}
{{- end -}}

{{/* clsact.launch.render.resolve_config, the part Helm can do: the save dir (saveDir, else
     Global.output_dir) and the endpoint written into Global. Returns the config as JSON. */}}
{{- define "clsact.runConfig" -}}
{{- $cfg := include "clsact.configMap" . | fromJson -}}
{{- $global := get $cfg "Global" | default dict -}}
{{- if not (kindIs "map" $global) -}}
{{- fail "config: Global must be a mapping" -}}
{{- end -}}
{{- $global = deepCopy $global -}}
{{- range $key := list "model_dir" "data_dir" "scratch_dir" -}}
{{- if and (hasKey $global $key) (kindIs "string" (get $global $key)) -}}
{{- include "clsact.checkLocation" (dict "value" (get $global $key) "what" (printf "config Global.%s" $key) "mounts" $.Values.volumeMounts) -}}
{{- end -}}
{{- end -}}
{{- $dist := get $cfg "Distillation" | default dict -}}
{{- if and (kindIs "map" $dist) (hasKey $dist "teacher_model_dir") (kindIs "string" (get $dist "teacher_model_dir")) -}}
{{- include "clsact.checkLocation" (dict "value" (get $dist "teacher_model_dir") "what" "config Distillation.teacher_model_dir" "mounts" .Values.volumeMounts) -}}
{{- end -}}
{{- $saveDir := include "clsact.saveDir" . -}}
{{- $_ := set $global "output_dir" $saveDir -}}
{{- if .Values.s3Endpoint -}}
{{- $_ := set $global "s3_endpoint" .Values.s3Endpoint -}}
{{- end -}}
{{- $_ := set $cfg "Global" $global -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* The save dir: saveDir, else Global.output_dir; s3:// or a path a volume mounts
     (clsact.launch.render.check_pod_location). */}}
{{- define "clsact.saveDir" -}}
{{- $cfg := include "clsact.configMap" . | fromJson -}}
{{- $global := get $cfg "Global" | default dict -}}
{{- $saveDir := .Values.saveDir | default (get $global "output_dir") | default "" -}}
{{- if not $saveDir -}}
{{- fail "no save dir: set saveDir=s3://bucket/prefix (or Global.output_dir in the config)" -}}
{{- end -}}
{{- include "clsact.checkLocation" (dict "value" $saveDir "what" "saveDir" "mounts" .Values.volumeMounts) -}}
{{- $saveDir -}}
{{- end -}}

{{/* Fails unless (dict "value" V "what" W "mounts" M) is s3:// or under a mounted path. */}}
{{- define "clsact.checkLocation" -}}
{{- if not (hasPrefix "s3://" .value) -}}
{{- if not (hasPrefix "/" .value) -}}
{{- fail (printf "%s is the relative path %q: a pod cannot see your working directory; use s3://bucket/prefix" .what .value) -}}
{{- end -}}
{{- $under := false -}}
{{- range .mounts -}}
{{- $m := clean (.mountPath | default "") -}}
{{- if and (hasPrefix "/" $m) (or (eq $m "/") (eq (clean $.value) $m) (hasPrefix (printf "%s/" $m) (clean $.value))) -}}
{{- $under = true -}}
{{- end -}}
{{- end -}}
{{- if not $under -}}
{{- fail (printf "%s is the local path %q, which no volume mounts in the pod; use s3://bucket/prefix or mount it (volumes/volumeMounts)" .what .value) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* clsact.launch.values._check_access and _check_env: refuse what would let the pods read
     more than the S3 Secret unless `allow` permits it, and literal secrets in env. */}}
{{- define "clsact.checkAccess" -}}
{{- $how := "in the values if submitters of this namespace may do that (README: Permissions)" -}}
{{- range $i, $vol := .Values.volumes -}}
{{- if and (hasKey $vol "hostPath") (not $.Values.allow.hostPath) -}}
{{- fail (printf "volumes[%d] mounts the node's path %v: set allow.hostPath: true %s" $i (($vol.hostPath | default dict).path) $how) -}}
{{- end -}}
{{- range (($vol.projected | default dict).sources | default list) -}}
{{- if and (hasKey . "serviceAccountToken") (not $.Values.allow.serviceAccount) -}}
{{- fail (printf "volumes[%d] mounts a service-account token: set allow.serviceAccount: true %s" $i $how) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $permitted := append (.Values.allow.secrets | default list) .Values.s3Secret -}}
{{- range $i, $vol := .Values.volumes -}}
{{- if hasKey $vol "secret" -}}
{{- $secret := ($vol.secret | default dict).secretName | default "" -}}
{{- if not (has $secret $permitted) -}}
{{- fail (printf "volumes[%d] reads the Secret %q: list it in allow.secrets %s" $i $secret $how) -}}
{{- end -}}
{{- end -}}
{{- range (($vol.projected | default dict).sources | default list) -}}
{{- if hasKey . "secret" -}}
{{- if not (has (.secret.name | default "") $permitted) -}}
{{- fail (printf "volumes[%d] (projected) reads the Secret %q: list it in allow.secrets %s" $i (.secret.name | default "") $how) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range (include "clsact.userEnv" . | fromJsonArray) -}}
{{- $ref := (.valueFrom | default dict).secretKeyRef -}}
{{- if and $ref (not (has ($ref.name | default "") $permitted)) -}}
{{- fail (printf "env %s reads the Secret %q: list it in allow.secrets %s" .name ($ref.name | default "") $how) -}}
{{- end -}}
{{- if and (hasKey . "value") (regexMatch "(?i)SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY" .name) -}}
{{- fail (printf "env %s looks like a secret; never put its value in values: put it in a Secret and use s3Secret or valueFrom.secretKeyRef" .name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.serviceAccountName (not .Values.allow.serviceAccount) -}}
{{- fail (printf "serviceAccountName %q makes the pods act with that account's token: set allow.serviceAccount: true %s" .Values.serviceAccountName $how) -}}
{{- end -}}
{{- end -}}

{{/* The user's env as a list of EnvVar (a mapping becomes NAME/value pairs, sorted by name;
     values as strings), as clsact.launch.values._check_env. JSON array. */}}
{{- define "clsact.userEnv" -}}
{{- $out := list -}}
{{- if kindIs "map" .Values.env -}}
{{- range $k, $v := .Values.env -}}
{{- $out = append $out (dict "name" $k "value" (include "clsact.envValue" (dict "name" $k "value" $v))) -}}
{{- end -}}
{{- else -}}
{{- range .Values.env -}}
{{- $item := deepCopy . -}}
{{- if hasKey $item "value" -}}
{{- $_ := set $item "value" (include "clsact.envValue" (dict "name" $item.name "value" $item.value)) -}}
{{- end -}}
{{- $out = append $out $item -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* One env value as the string Python's str() writes (clsact.launch.values._check_env):
     a whole number without an exponent (Helm reads YAML numbers as float64, and toString
     would write 16777216 as 1.6777216e+07, which C's atoll reads as 1); booleans and null
     refused, as Python refuses them. */}}
{{- define "clsact.envValue" -}}
{{- $v := .value -}}
{{- if or (kindIs "bool" $v) (kindIs "invalid" $v) -}}
{{- fail (printf "env %s must be a string or number, got %v" .name $v) -}}
{{- else if and (kindIs "float64" $v) (eq $v (float64 (int64 $v))) -}}
{{- int64 $v -}}
{{- else -}}
{{- toString $v -}}
{{- end -}}
{{- end -}}

{{/* clsact.launch.render.pod_affinity: the user's affinity, GPU pods kept to nodes whose
     GPUs the image runs: gpuCompute (a list of compute capabilities; one term per major on
     GPU feature discovery's compute labels; auto and any add nothing here: the chart cannot
     read the image's record, the nightly's submitter in the image can) and gpuProducts
     (nvidia.com/gpu.product). Each of the user's required terms is combined with each GPU
     term. JSON. */}}
{{- define "clsact.affinity" -}}
{{- $aff := deepCopy (.Values.affinity | default dict) -}}
{{- $gpu := list -}}
{{- if gt (int .Values.gpusPerWorker) 0 -}}
{{- if kindIs "slice" .Values.gpuCompute -}}
{{- $minors := dict -}}
{{- range .Values.gpuCompute -}}
{{- $parts := splitList "." (toString .) -}}
{{- $major := index $parts 0 -}}
{{- $minor := atoi (index $parts 1) -}}
{{- if or (not (hasKey $minors $major)) (lt $minor (int (get $minors $major))) -}}
{{- $_ := set $minors $major $minor -}}
{{- end -}}
{{- end -}}
{{- range $major := keys $minors | sortAlpha -}}
{{- $exprs := list (dict "key" "nvidia.com/gpu.compute.major" "operator" "In" "values" (list $major)) -}}
{{- $minor := int (get $minors $major) -}}
{{- if gt $minor 0 -}}
{{- $exprs = append $exprs (dict "key" "nvidia.com/gpu.compute.minor" "operator" "Gt" "values" (list (toString (sub $minor 1)))) -}}
{{- end -}}
{{- $gpu = append $gpu (dict "matchExpressions" $exprs) -}}
{{- end -}}
{{- end -}}
{{- with .Values.gpuProducts -}}
{{- $product := dict "key" "nvidia.com/gpu.product" "operator" "In" "values" . -}}
{{- if $gpu -}}
{{- $with := list -}}
{{- range $gpu -}}
{{- $with = append $with (dict "matchExpressions" (append .matchExpressions $product)) -}}
{{- end -}}
{{- $gpu = $with -}}
{{- else -}}
{{- $gpu = list (dict "matchExpressions" (list $product)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $gpu -}}
{{- $node := deepCopy ($aff.nodeAffinity | default dict) -}}
{{- $req := deepCopy (get $node "requiredDuringSchedulingIgnoredDuringExecution" | default dict) -}}
{{- $theirs := $req.nodeSelectorTerms | default (list (dict)) -}}
{{- $terms := list -}}
{{- range $t := $theirs -}}
{{- range $g := $gpu -}}
{{- $term := deepCopy $t -}}
{{- $_ := set $term "matchExpressions" (concat ($t.matchExpressions | default list) $g.matchExpressions) -}}
{{- $terms = append $terms $term -}}
{{- end -}}
{{- end -}}
{{- $_ := set $req "nodeSelectorTerms" $terms -}}
{{- $_ := set $node "requiredDuringSchedulingIgnoredDuringExecution" $req -}}
{{- $_ := set $aff "nodeAffinity" $node -}}
{{- end -}}
{{- toJson $aff -}}
{{- end -}}

{{/* clsact.launch.render._resources: GPUs added to the limits. JSON. */}}
{{- define "clsact.resources" -}}
{{- $res := deepCopy (.Values.resources | default dict) -}}
{{- if gt (int .Values.gpusPerWorker) 0 -}}
{{- $limits := deepCopy ($res.limits | default dict) -}}
{{- $_ := set $limits .Values.gpuResource (int .Values.gpusPerWorker) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toJson $res -}}
{{- end -}}

{{/* cleanPodPolicy or the operator's default (clsact.launch.values.resolve). */}}
{{- define "clsact.cleanPodPolicy" -}}
{{- if eq .Values.operator "jobset" -}}
{{- if .Values.cleanPodPolicy -}}
{{- fail "cleanPodPolicy: a JobSet has none (its pods go with it: ttlSecondsAfterFinished); remove it" -}}
{{- end -}}
{{- else -}}
{{- $allowed := dict "paddle" (list "OnCompletion" "OnFailure" "Always" "Never") "kubeflow" (list "Running" "All" "None") -}}
{{- $policy := .Values.cleanPodPolicy | default (ternary "OnCompletion" "Running" (eq .Values.operator "paddle")) -}}
{{- if not (has $policy (get $allowed .Values.operator)) -}}
{{- fail (printf "cleanPodPolicy %q is not one of %s (%s operator)" $policy (join ", " (get $allowed .Values.operator)) .Values.operator) -}}
{{- end -}}
{{- $policy -}}
{{- end -}}
{{- end -}}

{{/* clsact.launch.values._check_scheduling: queue and gang settings the operator honours. */}}
{{- define "clsact.checkScheduling" -}}
{{- if and .Values.queueName (eq .Values.operator "paddle") -}}
{{- fail (printf "queueName %q: Kueue cannot hold a paddle-operator PaddleJob (it has no suspend); use operator: jobset (or kubeflow), or drop queueName" .Values.queueName) -}}
{{- end -}}
{{- if and .Values.gangQueue (not .Values.gangScheduling) -}}
{{- fail (printf "gangQueue %q is a Volcano queue: set gangScheduling: true too (or drop gangQueue)" .Values.gangQueue) -}}
{{- end -}}
{{- if and .Values.gangScheduling .Values.queueName -}}
{{- fail "gangScheduling (Volcano) and queueName (Kueue) both decide when the pods start: pick one (with Kueue, all-or-nothing comes from its waitForPodsReady setting)" -}}
{{- end -}}
{{- end -}}

{{/* clsact.launch.render.gang: the Volcano schedulingPolicy of a PaddleJob. JSON. */}}
{{- define "clsact.gangPolicy" -}}
{{- $policy := dict "minAvailable" (int .Values.workers) -}}
{{- with .Values.gangQueue }}{{ $_ := set $policy "queue" . }}{{ end -}}
{{- with .Values.priorityClassName }}{{ $_ := set $policy "priorityClass" . }}{{ end -}}
{{- toJson $policy -}}
{{- end -}}

{{/* The job object's labels: the run's, plus Kueue's queue label. JSON. */}}
{{- define "clsact.jobLabels" -}}
{{- $labels := include "clsact.runLabels" . | fromJson -}}
{{- with .Values.queueName }}{{ $_ := set $labels "kueue.x-k8s.io/queue-name" . }}{{ end -}}
{{- toJson $labels -}}
{{- end -}}

{{- define "clsact.image" -}}
{{- required "no image: set image=REGISTRY/clsact:TAG (make push REGISTRY=... prints it)" .Values.image -}}
{{- end -}}

{{/* The launch values file the nightly submitter reads (`clsact submit --values`): every
     launch key that is set, the namespace the release's. JSON. */}}
{{- define "clsact.launchValues" -}}
{{- $out := dict "namespace" .Release.Namespace "name" (.Values.name | default .Release.Name) -}}
{{- range $key := list "operator" "image" "imagePullPolicy" "workers" "gpusPerWorker" "gpuResource" "saveDir" "s3Endpoint" "resources" "shmSize" "nodeSelector" "tolerations" "affinity" "gpuCompute" "gpuProducts" "imagePullSecrets" "serviceAccountName" "priorityClassName" "queueName" "gangScheduling" "gangQueue" "env" "labels" "annotations" "volumes" "volumeMounts" "cleanPodPolicy" "ttlSecondsAfterFinished" "activeDeadlineSeconds" "backoffLimit" "clsactBin" "python" "allow" -}}
{{- $value := get $.Values $key -}}
{{- if or $value (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) (kindIs "bool" $value) -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- $_ := set $out "s3Secret" (.Values.s3Secret | default "") -}}
{{- $_ := set $out "ttlSecondsAfterFinished" .Values.ttlSecondsAfterFinished -}}
{{- toJson $out -}}
{{- end -}}
