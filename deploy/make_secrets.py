"""Makes a deployment's secrets: one owner-only file per secret, and the `.env` docker compose reads.

    python deploy/make_secrets.py                      # deploy/secrets/ and .env (refuses to overwrite)
    python deploy/make_secrets.py --force              # new secrets (rotation: restart everything)

deploy/secrets/ holds one file per secret, named after the environment variable it becomes:

    RAY_AUTH_TOKEN           Ray's token authentication (RAY_AUTH_MODE=token; compose and the Ray
                             cluster launcher; KubeRay makes its own)
    QFLEET_REDIS_PASSWORD    the control-plane Redis's password (requirepass)

`.env` (docker compose) holds both and GRAFANA_ADMIN_PASSWORD, Grafana's admin password, which
goes nowhere else (not to the Ray nodes, whose environment every job inherits). The replay's token
and TLS certificate are not here: `qfleet train` makes them itself for each run (standalone
`qfleet replay serve` processes take theirs from `qfleet replay credentials`).

Every value is URL-safe base64 or hex (A-Z a-z 0-9 - _): the deploy files refuse a Redis password
with any other character, since it is written into a quoted redis.conf line.

Kubernetes: `kubectl create secret generic qfleet-secrets --from-file=deploy/secrets/QFLEET_REDIS_PASSWORD`
(the key is the file name). Ray cluster launcher: deploy/ray/cluster.yaml mounts the folder.
Both deploy/secrets/ and .env are in .gitignore and .dockerignore; the values are printed nowhere.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import secrets
import sys

SECRET_FILE_NAMES = ("RAY_AUTH_TOKEN", "QFLEET_REDIS_PASSWORD")
"""The secrets written to deploy/secrets/ (for the Ray nodes and Kubernetes)."""

ENV_FILE_NAMES = ("RAY_AUTH_TOKEN", "QFLEET_REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
"""The secrets docker compose reads from `.env`."""


def make_secrets() -> dict[str, str]:
    """Fresh random values: 32 bytes for Ray and Redis, 18 for Grafana."""
    return {
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "QFLEET_REDIS_PASSWORD": secrets.token_urlsafe(32),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(18),
    }


def write_private(path: pathlib.Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--secrets-dir", default="deploy/secrets", help="one file per secret (default %(default)s)")
    parser.add_argument("--env-file", default=".env", help="docker compose's variables (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace existing secrets (rotation)")
    args = parser.parse_args(argv)
    directory, env_file = pathlib.Path(args.secrets_dir), pathlib.Path(args.env_file)
    if not args.force and (env_file.exists() or (directory.exists() and any(directory.iterdir()))):
        print(f"{directory} or {env_file} exists already: --force replaces them", file=sys.stderr)
        return 2
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    values = make_secrets()
    for name in SECRET_FILE_NAMES:
        write_private(directory / name, values[name])
    write_private(env_file, "".join(f"{name}={values[name]}\n" for name in ENV_FILE_NAMES))
    print(f"wrote {', '.join(SECRET_FILE_NAMES)} to {directory}/ and {', '.join(ENV_FILE_NAMES)} to {env_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
