"""The launcher: a run rendered into Kubernetes objects (PaddleJob, ConfigMap), submitted,
followed, and scheduled every night (``clsact render/submit/status/list/logs/cancel/rbac``)."""
