{{/* The worker pod template of every operator (clsact/launch/templates/_pod.yaml.j2): the training container
     comes first (paddle-operator injects its env into containers[0]). Takes
     (dict "root" $ "container" NAME). */}}
{{- define "clsact.podTemplate" -}}
{{- $v := .root.Values -}}
{{- $name := include "clsact.jobName" .root -}}
metadata:
  labels: {{ include "clsact.runLabels" .root }}
  {{- $annotations := $v.annotations | default dict }}
  {{- if and $v.gangScheduling (eq $v.operator "jobset") }}
  {{- $annotations = merge (dict "scheduling.k8s.io/group-name" $name) $annotations }}
  {{- end }}
  annotations: {{ $annotations | toJson }}
spec:
  {{- if eq $v.operator "jobset" }}
  restartPolicy: Never
  {{- end }}
  {{- if $v.gangScheduling }}
  schedulerName: volcano
  {{- end }}
  {{- with $v.serviceAccountName }}
  serviceAccountName: {{ . | toJson }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . | toJson }}
  {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector: {{ . | toJson }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations: {{ . | toJson }}
  {{- end }}
  {{- with (include "clsact.affinity" .root | fromJson) }}
  affinity: {{ . | toJson }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
  {{- range . }}
  - name: {{ . | toJson }}
  {{- end }}
  {{- end }}
  {{- if and (eq $v.operator "paddle") $v.activeDeadlineSeconds }}
  activeDeadlineSeconds: {{ int $v.activeDeadlineSeconds }}
  {{- end }}
  containers:
  - name: {{ .container | toJson }}
    image: {{ include "clsact.image" .root | toJson }}
    imagePullPolicy: {{ $v.imagePullPolicy | toJson }}
    command: {{ include "clsact.command" .root }}
    {{- $env := list (dict "name" "PYTHONUNBUFFERED" "value" "1") }}
    {{- if $v.s3Secret }}
    {{- $env = append $env (dict "name" "CLSACT_S3_CREDENTIALS_DIR" "value" "/var/run/secrets/clsact/s3") }}
    {{- end }}
    {{- if eq $v.operator "jobset" }}
    {{- $env = concat $env (list (dict "name" "CLSACT_MASTER_HOST" "value" (printf "%s-worker-0-0.%s" $name $name)) (dict "name" "CLSACT_MASTER_PORT" "value" "37777")) }}
    {{- end }}
    env: {{ concat $env (include "clsact.userEnv" .root | fromJsonArray) | toJson }}
    {{- if or (eq $v.operator "kubeflow") (eq $v.operator "jobset") }}
    ports: [{"name": "master", "containerPort": 37777}]
    {{- end }}
    resources: {{ include "clsact.resources" .root }}
    volumeMounts:
    - name: clsact-config
      mountPath: "/etc/clsact"
      readOnly: true
    - name: dshm
      mountPath: /dev/shm
    {{- if $v.s3Secret }}
    - name: s3-credentials
      mountPath: "/var/run/secrets/clsact/s3"
      readOnly: true
    {{- end }}
    {{- range $v.volumeMounts }}
    - {{ . | toJson }}
    {{- end }}
  volumes:
  - name: clsact-config
    configMap:
      name: {{ include "clsact.configMapName" .root | toJson }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $v.shmSize | toJson }}
  {{- with $v.s3Secret }}
  {{- /* the S3 keys as files, not env: paddle.distributed.launch prints a failed worker's
         whole environment (clsact.storage.s3, CLSACT_S3_CREDENTIALS_DIR) */}}
  - name: s3-credentials
    secret:
      secretName: {{ . | toJson }}
  {{- end }}
  {{- range $v.volumes }}
  - {{ . | toJson }}
  {{- end }}
{{- end -}}

{{/* clsact.launch.render.container_command. JSON array. */}}
{{- define "clsact.command" -}}
{{- $v := .Values -}}
{{- $launcher := list "--log_dir" "/tmp/clsact-launch" "--nproc_per_node" (toString (max (int $v.gpusPerWorker) 1)) -}}
{{- $job := list $v.clsactBin "compress" "--config" "/etc/clsact/config.yaml" "--save-dir" (include "clsact.saveDir" .) "--run-id" (include "clsact.jobName" .) -}}
{{- $cmd := concat (list $v.python "-m" "paddle.distributed.launch") $launcher $job -}}
{{- if eq $v.operator "jobset" -}}
{{- /* clsact.launch.render.JOBSET_LAUNCH */ -}}
{{- $script := "rank=\"${JOB_COMPLETION_INDEX:?not a pod of an Indexed Job (JobSet)}\"; if [ \"$rank\" = 0 ]; then master=127.0.0.1; else master=\"$CLSACT_MASTER_HOST\"; fi; exec \"$0\" -m paddle.distributed.launch --master \"$master:$CLSACT_MASTER_PORT\" --rank \"$rank\" \"$@\"" -}}
{{- $cmd = concat (list "/bin/sh" "-c" $script $v.python "--nnodes" (toString (int $v.workers))) $launcher $job -}}
{{- end -}}
{{- if and $v.existingConfigMap $v.s3Endpoint -}}
{{- $cmd = concat $cmd (list "--s3-endpoint" $v.s3Endpoint) -}}
{{- end -}}
{{- toJson $cmd -}}
{{- end -}}

{{/* The ConfigMap the workers mount: the chart's (<job>-config) or existingConfigMap. */}}
{{- define "clsact.configMapName" -}}
{{- .Values.existingConfigMap | default (printf "%s-config" (include "clsact.jobName" .)) -}}
{{- end -}}
