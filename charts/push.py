"""``make chart-push REGISTRY=registry.example.com/team``: package charts/clsact and push it
to ``oci://REGISTRY/clsact:<chart version>`` with the Helm SDK (helm-python-sdk).

Credentials come from Helm's registry config (``helm registry login``) or Docker's; a
registry on loopback (127.0.0.0/8, localhost) is spoken to over plain HTTP, any other over
HTTPS. Prints ``pushed oci://REGISTRY/clsact:VERSION@sha256:...``; a missing REGISTRY, an
unreachable or refusing registry is one ``chart-push: error:`` line and exit 2.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

CHART = Path(__file__).resolve().parent / "clsact"


def main(argv: list[str]) -> int:
    registry = (argv[1] if len(argv) > 1 else os.environ.get("REGISTRY", "")).strip()
    if not registry:
        print("chart-push: error: set REGISTRY=registry.example.com/team (the chart goes to "
              "oci://REGISTRY/clsact:VERSION)", file=sys.stderr)
        return 2
    registry = registry.removeprefix("oci://").rstrip("/")
    host = registry.split("/")[0].split(":")[0]
    plain = host == "localhost" or host.startswith("127.")
    import helm_python
    import yaml

    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    ref = f"{registry}/clsact:{version}"
    try:
        with tempfile.TemporaryDirectory(prefix="clsact-chart-") as tmp:
            archive = helm_python.package(str(CHART), destination=tmp)
            client = helm_python.RegistryClient(plain_http=plain)
            try:
                helm_python.push(archive, f"oci://{registry}", client=client, plain_http=plain)
                digest = client.resolve(ref)["digest"]
            finally:
                client.close()
    except helm_python.HelmError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"chart-push: error: pushing to oci://{registry}: {first}", file=sys.stderr)
        return 2
    print(f"pushed oci://{ref}@{digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
