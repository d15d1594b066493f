"""The deployment files are valid for the tools that read them (real binaries and schemas; no
Docker engine or Kubernetes here), agree with each other, start runs with valid configs, and are
closed by default: authentication on, secrets from a Secret or an ignored file, never on a command
line, nothing listening wider than it must."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from system.bench.cluster_topology import ACTOR_NODE, HEAD_CPUS, LEARNER_NODE, WORKERS, train_overrides
from system.cli import build_parser
from system.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

SECRET_ENV = {
    "RAY_AUTH_TOKEN": "test-ray-token",
    "QFLEET_REDIS_PASSWORD": "test-redis-password",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
}
"""What .env (deploy/make_secrets.py) gives docker compose; compose refuses to render without each."""


def compose_env(**changes: str | None) -> dict[str, str]:
    """A clean environment for docker-compose: the secrets, no developer's settings, `changes` applied."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT), **SECRET_ENV}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def check_train_command(command: str, address: str = "auto") -> RunConfig:
    """`command` (a shell line holding `qfleet train ...`) parses, and its config and --set keys
    load; returns the config it runs with."""
    words = shlex.split(command[command.index("qfleet train") :].rstrip("'\""))
    args = build_parser().parse_args(words[1:])
    assert args.command == "train" and args.path.startswith("configs/")
    config = load_config(ROOT / args.path, args.set)
    assert config.ray.address == address and config.redis.url.startswith("redis://")
    return config


def test_prometheus_config_passes_promtool():
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "qfleet")
    assert job["honor_labels"] is True and job["http_sd_configs"][0]["url"] == "http://discovery:9101/targets"


@pytest.fixture(scope="module")
def render_compose(tmp_path_factory):
    """Runs `docker-compose config ARGS` in `env`, with `env_file` (default: an empty one, so a
    developer's own .env, made by deploy/make_secrets.py, does not change the test)."""
    empty = tmp_path_factory.mktemp("compose") / "empty.env"
    empty.write_text("")

    def render(env: dict[str, str], *args: str, env_file: Path = empty) -> subprocess.CompletedProcess:
        command = ["docker-compose", "--env-file", str(env_file), "config", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)

    return render


@pytest.fixture(scope="module")
def compose(render_compose) -> dict:
    quiet = render_compose(compose_env(), "-q")
    assert quiet.returncode == 0, quiet.stderr
    full = render_compose(compose_env())  # defaults only, whatever this shell exports
    assert full.returncode == 0, full.stderr
    return yaml.safe_load(full.stdout)


def test_compose_has_every_service_and_scales_workers(compose):
    services = compose["services"]
    assert {"redis", "prometheus", "grafana", "ray-head", "ray-worker", "train", "discovery"} <= set(services)
    worker = services["ray-worker"]
    # `--scale ray-worker=N` needs no fixed name and no published port.
    assert "container_name" not in worker and "ports" not in worker
    assert "--address=ray-head:6380" in worker["command"] and "--port=6380" in " ".join(services["ray-head"]["command"])
    # Published ports stay on loopback.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)

    def binds(service: dict) -> dict[str, str]:  # repository path -> container path
        found = {}
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("/"):
                found[Path(source).relative_to(ROOT).as_posix()] = target
        return found

    # Grafana: anonymous access off by default, our provisioning and dashboards mounted.
    grafana = services["grafana"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    mounts = binds(grafana)
    assert mounts["deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["deploy/grafana/dashboards"]
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "qfleet.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == dashboards_dir
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dashboards_dir}/qfleet.json"
    assert (DEPLOY / "grafana" / "dashboards" / "qfleet.json").exists()
    assert binds(services["prometheus"])["deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    # Discovery reads the compose Redis on the port the Prometheus config names.
    assert services["discovery"]["command"][:2] == ["qfleet", "discovery"]
    assert "redis://redis:6379/0" in services["discovery"]["command"] and "9101" in services["discovery"]["command"]


def test_compose_ray_head_serves_its_dashboard_on_one_address_of_several(compose, tmp_path):
    for name, script in {
        "hostname": 'printf "172.18.0.3 fd00::3 \\n"',  # what `hostname -i` prints with IPv6 on
        "ray": 'printf "%s\\n" "$@"',
    }.items():
        (tmp_path / name).write_text(f"#!/bin/sh\n{script}\n")
        (tmp_path / name).chmod(0o755)
    command = compose["services"]["ray-head"]["command"]
    assert command[:2] == ["bash", "-c"]
    result = subprocess.run(
        ["bash", "-c", command[2].replace("$$", "$")],
        capture_output=True,
        text=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "--dashboard-host=172.18.0.3" in result.stdout.splitlines()


def test_compose_train_job_submits_a_valid_run(compose):
    command = " ".join(compose["services"]["train"]["command"])
    assert "ray job submit --address=http://ray-head:8265" in command
    check_train_command(command)


def test_dockerfile_copies_every_package_and_what_compose_mounts():
    text = (DEPLOY / "Dockerfile").read_text()
    copied = {line.split()[1] for line in text.splitlines() if line.startswith("COPY ")}
    for package in ("replay", "learner", "actors", "system", "configs", "pyproject.toml", "requirements.txt"):
        assert package in copied, package
    for source in copied:
        assert (ROOT / source).exists(), source
    assert "torch==2.13.0" in text and "requirements-nodeps.txt" in text


def test_the_image_sets_home_to_its_users_home_where_the_launcher_mounts_secrets():
    """The cluster launcher puts `~/` file mounts at the HOME of the image's environment (/root
    when unset), so the image must set it to the home of the user it runs as."""
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    useradd = next(line for line in lines if "useradd" in line)
    uid = re.search(r"--uid (\d+)", useradd).group(1)
    home = re.search(r"--home-dir (\S+)", useradd).group(1)
    homes = [line.split("=", 1)[1] for line in lines if line.startswith("ENV HOME=")]
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert homes == [home] and user == [f"{uid}:{uid}"]
    assert lines.index(f"ENV HOME={home}") < lines.index(f"USER {uid}:{uid}")
    config = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    for target in config["file_mounts"]:
        assert target.startswith("~/") or target.startswith(home + "/"), target
    # The commands that use the mount name it the same way.
    commands = " ".join(config["setup_commands"])
    assert "~/qfleet-secrets" in commands and "/root" not in commands


def test_ray_cluster_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert types["android_emulator"]["resources"] == {"android_emulator": 4}
    assert "--gpus all" in types["gpu_learner"]["docker"]["worker_run_options"]
    assert config["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    # The check is real: a misspelt key is refused.
    broken = copy.deepcopy(config)
    broken["max_worker"] = broken.pop("max_workers")
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(broken))


def test_ray_submit_script_runs_a_valid_train_command(tmp_path):
    fake_ray = tmp_path / "ray"
    fake_ray.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')  # prints what would be submitted
    fake_ray.chmod(0o755)
    submit = ["bash", str(DEPLOY / "ray" / "submit.sh"), "configs/minatar_breakout.yaml", "b1"]
    path = {"PATH": f"{tmp_path}:/usr/bin:/bin", "RAY_AUTH_TOKEN": "test-ray-token"}
    result = subprocess.run([*submit, "--set", "actors.num_actors=8"], capture_output=True, text=True, env=path)
    assert result.returncode == 0, result.stderr
    assert "test-ray-token" not in result.stdout  # the token reaches ray through its environment only
    lines = result.stdout.splitlines()
    assert lines[:2] == ["job", "submit"] and "--submission-id=qfleet-b1" in lines
    entry = lines[-1].replace("\\$head_ip", "10.0.0.1").replace("$head_ip", "10.0.0.1")
    check_train_command(entry)
    assert "actors.num_actors=8" in entry
    usage = subprocess.run(["bash", str(DEPLOY / "ray" / "submit.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_ray_submit_script_without_extra_arguments_adds_none(tmp_path):
    fake_ray = tmp_path / "ray"
    fake_ray.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake_ray.chmod(0o755)
    submit = ["bash", str(DEPLOY / "ray" / "submit.sh"), "configs/cartpole.yaml", "c1"]
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "RAY_AUTH_TOKEN": "test-ray-token"}
    result = subprocess.run(submit, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    entry = result.stdout.splitlines()[-1].replace("\\$head_ip", "10.0.0.1").replace("$head_ip", "10.0.0.1")
    assert "''" not in entry  # an empty argument: `qfleet train` would refuse it (unrecognized arguments)
    check_train_command(entry)


def test_kuberay_manifests_agree_with_each_other():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kuberay" / "raycluster.yaml").read_text())}
    cluster, service, claim = docs["RayCluster"], docs["Service"], docs["PersistentVolumeClaim"]
    assert cluster["apiVersion"] == "ray.io/v1" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert cluster["spec"]["workerGroupSpecs"][0]["groupName"] == "actors"  # docs/deploy.md's kubectl patch path
    assert set(groups) == {"actors", "gpu-learner", "android-emulators"}
    assert kuberay_resources(groups["android-emulators"]) == {"android_emulator": 4}
    gpu = groups["gpu-learner"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1 and groups["gpu-learner"]["rayStartParams"]["num-gpus"] == "1"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    head_ports = {p["containerPort"] for c in head for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= head_ports
    assert service["spec"]["selector"] == {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    check_train_command(job["spec"]["entrypoint"])
    redis_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "redis")
    assert re.search(rf"redis://{service['metadata']['name']}:{redis_port}/0", job["spec"]["entrypoint"])


# -- closed by default ------------------------------------------------------------------------------

OPEN_SETTINGS = [
    (r"protected-mode\W+no\b", "Redis with protected mode off"),
    (r"RAY_AUTH_MODE\W[^\n]*\bdisabled\b", "Ray token authentication turned off"),
    (r"dashboard-host\W+0\.0\.0\.0", "the Ray dashboard and job API on every interface"),
    (r"\b0?777\b", "a world-writable directory"),
    (r"GRAFANA_ADMIN_PASSWORD:-|GF_SECURITY_ADMIN_PASSWORD\W+admin\b", "a default Grafana admin password"),
    (r"\b10001\b", "the Ray client port exposed"),
    (r"--requirepass\b", "a Redis password on a command line"),
    (r"redis://[^/\s]*:[^@/\s]+@", "a password written into a Redis URL"),
]
"""(pattern, what it opens): none may appear in a deploy file."""

DEPLOY_FILES = sorted(
    path.relative_to(ROOT).as_posix()
    for path in [ROOT / "docker-compose.yml", *DEPLOY.rglob("*")]
    if path.is_file() and "secrets" not in path.relative_to(ROOT).parts
)


@pytest.mark.parametrize("name", DEPLOY_FILES)
def test_no_deploy_file_leaves_the_control_plane_open(name):
    found = [
        f"{name}:{number}: {what}: {line.strip()}"
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1)
        for pattern, what in OPEN_SETTINGS
        if re.search(pattern, line)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("pattern", "what"), OPEN_SETTINGS)
def test_the_open_settings_check_finds_what_the_old_files_had(pattern, what):
    old = {
        "Redis with protected mode off": "redis-server --bind 0.0.0.0 --protected-mode no",
        "Ray token authentication turned off": "- {name: RAY_AUTH_MODE, value: disabled}",
        "the Ray dashboard and job API on every interface": "ray start --head --dashboard-host=0.0.0.0",
        "a world-writable directory": "sudo chmod 777 /mnt/qfleet-runs",
        "a default Grafana admin password": "GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:-admin}",
        "the Ray client port exposed": "- {containerPort: 10001, name: client}",
        "a Redis password on a command line": "redis-server --requirepass hunter2",
        "a password written into a Redis URL": "--redis-url redis://:hunter2@redis:6379/0",
    }
    assert re.search(pattern, old[what])


@pytest.mark.parametrize("missing", sorted(SECRET_ENV))
def test_compose_refuses_to_render_without_each_secret(render_compose, missing):
    result = render_compose(compose_env(**{missing: None}), "-q")
    assert result.returncode != 0
    assert missing in result.stderr and "make_secrets.py" in result.stderr


def test_compose_turns_authentication_on_and_keeps_secrets_off_command_lines(compose):
    services = compose["services"]
    for name in ("ray-head", "ray-worker", "train", "discovery"):
        environment = services[name]["environment"]
        assert environment["RAY_AUTH_MODE"] == "token", name
        assert environment["RAY_AUTH_TOKEN"] == SECRET_ENV["RAY_AUTH_TOKEN"], name
        assert environment["QFLEET_REDIS_PASSWORD"] == SECRET_ENV["QFLEET_REDIS_PASSWORD"], name
        # Ray's environment is every job's: nothing it does not need (`qfleet train` makes its
        # replay credentials itself; Grafana's password is Grafana's).
        assert set(environment) == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "QFLEET_REDIS_PASSWORD"}, name
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == SECRET_ENV["GRAFANA_ADMIN_PASSWORD"]
    assert services["redis"]["user"] == "redis"  # not root
    assert "ports" not in services["redis"]
    for name, service in services.items():
        command = " ".join(service.get("command") or [])
        for value in SECRET_ENV.values():
            assert value not in command, f"{name}'s command line holds a secret"
        assert not service.get("privileged"), name


def redis_start_scripts() -> dict[str, tuple[str, str]]:
    """Deployment -> (shell, the script that starts its Redis), as each file holds it."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["command"]
    head = kuberay_documents()["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    kuberay = next(c for c in head if c["name"] == "redis")["command"]
    launcher = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())["head_start_ray_commands"]
    launched = next(c for c in launcher if "redis-server" in c)
    assert compose[:2] == kuberay[:2] == ["sh", "-c"] and launched.startswith(". ~/qfleet-env.sh && ")
    return {
        "compose": ("sh", compose[2].replace("$$", "$")),  # compose's escape for a literal $
        "kuberay": ("sh", kuberay[2]),
        "launcher": ("bash", launched.removeprefix(". ~/qfleet-env.sh && ")),  # the env comes from the test
    }


def run_redis_script(deployment: str, password: str, tmp_path: Path, port: int, path_prefix: str = ""):
    """Starts `deployment`'s Redis script with `password`, its config file and port moved into the
    test's reach (no secret added to its command line); returns the Popen (its own process group)."""
    shell, script = redis_start_scripts()[deployment]
    script = script.replace("/tmp/redis.conf", f"{tmp_path}/r.conf")
    assert re.search(r"redis-server (\S+)$", script), script
    script += f" --port {port} --bind 127.0.0.1 --dir {tmp_path} --daemonize no"
    env = {"PATH": path_prefix + os.environ["PATH"], "QFLEET_REDIS_PASSWORD": password}
    return subprocess.Popen(
        [shell, "-c", script],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def command_lines(pid: int) -> bytes:
    """The command lines of `pid` and its descendants."""
    found = Path(f"/proc/{pid}/cmdline").read_bytes()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += b"\n" + command_lines(int(child))
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("deployment", ["compose", "kuberay", "launcher"])
def test_each_deployments_redis_asks_for_its_password_which_is_on_no_command_line(deployment, tmp_path):
    port, password = free_port(), "Test-redis_pass.word~9"  # every character make_secrets may use, and more
    server = run_redis_script(deployment, password, tmp_path, port)
    try:
        cli = ["redis-cli", "-p", str(port), "ping"]
        deadline = time.monotonic() + 10
        answer = ""
        while time.monotonic() < deadline and server.poll() is None:
            answer = subprocess.run(cli, capture_output=True, text=True).stdout.strip()
            if answer and "Connection refused" not in answer:
                break
            time.sleep(0.05)
        assert answer.startswith("NOAUTH"), (answer, server.poll())
        authed = subprocess.run(cli, capture_output=True, text=True, env={**os.environ, "REDISCLI_AUTH": password})
        assert authed.stdout.strip() == "PONG"
        wrong = subprocess.run(cli, capture_output=True, text=True, env={**os.environ, "REDISCLI_AUTH": "Test"})
        assert "WRONGPASS" in wrong.stdout + wrong.stderr
        assert password.encode() not in command_lines(server.pid)
        if deployment != "launcher":  # the launcher's config goes through a pipe
            assert stat.S_IMODE((tmp_path / "r.conf").stat().st_mode) == 0o600
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the script's own process group
        server.wait(timeout=10)


BAD_REDIS_PASSWORDS = {
    "a quote": 'pass"word',
    "a backslash": "pass\\word",
    "a newline": 'password\nrename-command CONFIG ""',
    "a space": "pass word",
    "nothing": "",
}
"""Passwords that would break out of (or empty) `requirepass "..."` in a redis config."""


@pytest.mark.parametrize("deployment", ["compose", "kuberay", "launcher"])
@pytest.mark.parametrize("what", sorted(BAD_REDIS_PASSWORDS))
def test_each_deployments_redis_refuses_a_password_that_would_alter_its_config(deployment, what, tmp_path):
    marker = tmp_path / "redis-server-ran"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "redis-server").write_text(f"#!/bin/sh\ntouch {marker}\ncat > /dev/null\n")
    (fake_bin / "redis-server").chmod(0o755)
    script = run_redis_script(deployment, BAD_REDIS_PASSWORDS[what], tmp_path, free_port(), f"{fake_bin}:")
    _, stderr = script.communicate(timeout=10)
    assert script.returncode == 1
    assert "QFLEET_REDIS_PASSWORD" in stderr and "make_secrets.py" in stderr
    if BAD_REDIS_PASSWORDS[what]:
        assert BAD_REDIS_PASSWORDS[what] not in stderr  # never echoed
    assert not marker.exists() and not (tmp_path / "r.conf").exists()


def test_make_secrets_writes_owner_only_files_that_compose_and_kubectl_take(render_compose, tmp_path):
    secrets_dir, env_file = tmp_path / "secrets", tmp_path / ".env"
    command = [sys.executable, str(DEPLOY / "make_secrets.py"), "--secrets-dir", str(secrets_dir)]
    command += ["--env-file", str(env_file)]
    made = subprocess.run(command, capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert made.returncode == 0, made.stderr
    # deploy/secrets/ is for the Ray nodes and Kubernetes: Grafana's password stays in .env.
    assert {path.name for path in secrets_dir.iterdir()} == {"RAY_AUTH_TOKEN", "QFLEET_REDIS_PASSWORD"}
    env_values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert set(env_values) == set(SECRET_ENV)
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    for path in [env_file, *secrets_dir.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
        assert path.read_text() not in made.stdout + made.stderr
    for name, value in env_values.items():  # what the Redis start scripts accept, long enough
        assert re.fullmatch(r"[A-Za-z0-9._~-]{24,}", value), name
        if name in {"RAY_AUTH_TOKEN", "QFLEET_REDIS_PASSWORD"}:
            assert (secrets_dir / name).read_text() == value
    # The .env alone renders compose (no secret from this shell).
    rendered = render_compose(compose_env(**{name: None for name in SECRET_ENV}), "-q", env_file=env_file)
    assert rendered.returncode == 0, rendered.stderr
    again = subprocess.run(command, capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert again.returncode == 2 and "--force" in again.stderr  # never overwritten by accident
    for ignore in (".gitignore", ".dockerignore"):
        lines = (ROOT / ignore).read_text().splitlines()
        assert ".env" in lines and any(line.rstrip("/") == "deploy/secrets" for line in lines), ignore


def test_the_ray_launcher_takes_its_secrets_from_the_mounted_folder(tmp_path):
    config = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    assert config["file_mounts"] == {"~/qfleet-secrets": "./deploy/secrets"}
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    for command in starts:
        if "ray start" in command or "redis-server" in command or "qfleet " in command:
            assert command.startswith(". ~/qfleet-env.sh"), command
    redis = next(c for c in starts if "redis-server" in c)
    assert "requirepass" in redis and "protected-mode yes" in redis and redis.rstrip().endswith("redis-server -")
    assert "sudo chmod 700 /mnt/qfleet-runs" in " ".join(config["initialization_commands"])
    for node in config["available_node_types"].values():
        assert "--privileged" not in " ".join(node.get("docker", {}).get("worker_run_options", []))
    # The setup commands, run in a home with the mounted folder (an old one holding Grafana's
    # password too), give the start commands Ray's and Redis's secrets and nothing else.
    mounted = tmp_path / "qfleet-secrets"
    mounted.mkdir()
    for name, value in SECRET_ENV.items():
        (mounted / name).write_text(value)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for command in config["setup_commands"]:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        assert not {value for value in SECRET_ENV.values() if value in command + done.stdout + done.stderr}
    assert stat.S_IMODE(mounted.stat().st_mode) == 0o700
    exported = subprocess.run(
        ["bash", "-c", ". ~/qfleet-env.sh && env -0"], capture_output=True, text=True, env=env
    ).stdout
    exported = dict(line.split("=", 1) for line in exported.split("\0") if line)
    assert {name: exported.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "QFLEET_REDIS_PASSWORD")} == {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": SECRET_ENV["RAY_AUTH_TOKEN"],
        "QFLEET_REDIS_PASSWORD": SECRET_ENV["QFLEET_REDIS_PASSWORD"],
    }
    assert "GRAFANA_ADMIN_PASSWORD" not in exported and SECRET_ENV["GRAFANA_ADMIN_PASSWORD"] not in exported.values()


def test_the_ray_submit_script_refuses_without_a_token(tmp_path):
    if (DEPLOY / "secrets" / "RAY_AUTH_TOKEN").exists():
        pytest.skip("this checkout has deploy/secrets/: the script reads the token from there")
    submit = ["bash", str(DEPLOY / "ray" / "submit.sh"), "configs/minatar_breakout.yaml", "b1"]
    result = subprocess.run(submit, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 2 and "RAY_AUTH_TOKEN" in result.stderr


def kuberay_documents() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kuberay" / "raycluster.yaml").read_text())}


def pod_specs() -> dict[str, dict]:
    """Group name (head, worker groups, the RayJob submitter) -> its pod spec."""
    cluster = kuberay_documents()["RayCluster"]["spec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    specs.update({g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]})
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    specs["submitter"] = job["spec"]["submitterPodTemplate"]["spec"]
    return specs


def test_kuberay_lets_the_operator_make_and_use_the_ray_token_and_pods_run_as_non_root():
    cluster = kuberay_documents()["RayCluster"]["spec"]
    # KubeRay >= 1.5.1: the operator makes the token's Secret, gives it to every Ray container,
    # the autoscaler and the RayJob submitter, and sends it on its own dashboard calls (job
    # status). It adds RAY_AUTH_TOKEN only where none is set (>= 1.6): a token set here would be
    # used by the cluster but not by the operator, whose calls would then get 401.
    assert cluster["authOptions"] == {"mode": "token"}
    assert tuple(int(n) for n in cluster["rayVersion"].split(".")) >= (2, 52, 0)  # KubeRay refuses older
    assert "env" not in cluster["autoscalerOptions"]
    for group, spec in pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] is True, group
        assert spec["securityContext"]["runAsUser"] != 0, group
        if "fsGroup" in spec["securityContext"]:  # the kubelet walks the volume only when needed
            assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch", group
        for container in spec["containers"]:
            where = f"{group}/{container['name']}"
            env = {e["name"]: e for e in container.get("env", [])}
            assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & set(env), where
            for name, variable in env.items():
                if name.startswith("QFLEET_"):
                    assert variable["valueFrom"]["secretKeyRef"] == {"name": "qfleet-secrets", "key": name}, where
            # Only the Redis password comes from qfleet-secrets (train makes its replay credentials).
            assert set(env) <= {"POD_IP", "QFLEET_REDIS_PASSWORD"}, where
            if container["name"] in ("ray-head", "ray-worker", "redis", "discovery"):
                assert "QFLEET_REDIS_PASSWORD" in env, where
            assert 10001 not in {p["containerPort"] for p in container.get("ports", [])}, where
            assert container.get("securityContext", {}).get("runAsUser", 1000) != 0, where
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["name"] == "ray-head"  # where the operator adds the token
    assert head["rayStartParams"]["dashboard-host"] == "$(POD_IP)"  # not KubeRay's default 0.0.0.0
    assert "POD_IP" in {e["name"] for e in head["template"]["spec"]["containers"][0]["env"]}


def test_only_the_emulator_group_is_privileged_and_says_why():
    text = (DEPLOY / "kuberay" / "raycluster.yaml").read_text().splitlines()
    privileged = []
    for group, spec in pod_specs().items():
        for container in spec["containers"]:
            context = container.get("securityContext", {})
            if context.get("privileged"):
                privileged.append(group)
            else:
                assert context.get("allowPrivilegeEscalation") is False, f"{group}/{container['name']}"
    assert privileged == ["android-emulators"]
    (number,) = [n for n, line in enumerate(text) if "privileged: true" in line]
    comment = []
    for line in reversed(text[:number]):
        if not line.strip().startswith("#"):
            break
        comment.append(line)
    explained = " ".join(comment)
    assert len(comment) >= 3 and "/dev/kvm" in explained and "device plugin" in explained, comment


def test_the_network_policy_admits_only_the_runs_pods():
    documents = kuberay_documents()
    policy, cluster = documents["NetworkPolicy"], documents["RayCluster"]
    run_pods = {"ray.io/cluster": cluster["metadata"]["name"]}
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["spec"]["podSelector"] == {"matchLabels": run_pods}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    assert all(rule.get("from") for rule in rules), "a rule without `from` admits everyone"
    unrestricted = [rule for rule in rules if "ports" not in rule]
    assert unrestricted == [{"from": [{"podSelector": {"matchLabels": run_pods}}]}]  # the run's pods only
    for rule in rules:
        for peer in rule["from"]:
            assert peer.get("podSelector", {}).get("matchLabels"), "every peer names the pods it admits"
            # A pod label alone can be copied in any namespace: outsiders come from a named one.
            if "namespaceSelector" in peer:
                assert set(peer["namespaceSelector"]) == {"matchLabels"}, peer
                assert set(peer["namespaceSelector"]["matchLabels"]) == {"kubernetes.io/metadata.name"}, peer
        for port in rule.get("ports", []):  # outsiders never reach Redis, the GCS or Ray's workers
            low, high = port["port"], port.get("endPort", port["port"])
            for closed in (6379, 6390, 10001, 10002, 19999):
                assert not low <= closed <= high, (rule, closed)
    namespaces = {
        peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name"): peer["namespaceSelector"]["matchLabels"][
            "kubernetes.io/metadata.name"
        ]
        for rule in rules
        for peer in rule["from"]
        if "namespaceSelector" in peer
    }
    assert namespaces == {"kuberay-operator": "ray-system", "prometheus": "monitoring"}
    # The submitter the policy admits to the job API is the RayJob's.
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    submitter = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    admitted = [peer["podSelector"]["matchLabels"] for rule in rules for peer in rule["from"]]
    assert submitter in admitted


# -- one topology: the cluster test's, README's recipe and every deployment's ------------------------


def placement(config: RunConfig) -> dict[str, object]:
    """What a run asks the cluster for: its shards, the learner's and the actors' resources and CPUs."""
    train, actors = config.train, config.actors
    return {
        "shards": train.num_shards,
        "shard_resources": train.shard_resources,
        "learner_resources": train.learner_resources,
        "learner_num_cpus": train.learner_num_cpus,
        "actor_resources": actors.resources,
        "actor_num_cpus": actors.num_cpus,
    }


TOPOLOGY_PLACEMENT = placement(load_config(ROOT / "configs" / "cartpole.yaml", train_overrides()))
"""What tests/smoke/test_cluster.py's run asks for (system/bench/cluster_topology.py)."""


def ray_start_options(command: str) -> dict[str, object]:
    """`ray start`'s --num-cpus and --resources (parsed from their JSON) in a shell line."""
    words = shlex.split(command[command.index("ray start") :])
    options: dict[str, object] = {}
    for word in words:
        if word.startswith("--num-cpus="):
            options["num_cpus"] = float(word.split("=", 1)[1].replace("${RAY_WORKER_CPUS:-4}", "4"))
        elif word.startswith("--resources="):
            options["resources"] = json.loads(word.split("=", 1)[1])
    return options


def kuberay_resources(group: dict) -> dict:
    """A group's custom resources, from KubeRay's quoted-JSON form '"{\"name\": n}"'."""
    return json.loads(json.loads(group["rayStartParams"].get("resources", '"{}"')))


def readme_cluster_recipe() -> list[str]:
    """The shell commands of README's "Deploy on a Ray cluster" block (continuations joined)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**Deploy on a Ray cluster**") :]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start : section.index("\n```", start)]
    return [line.split("   #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]


def test_the_readme_recipe_starts_the_cluster_tests_topology():
    commands = readme_cluster_recipe()
    head = next(c for c in commands if c.startswith("ray start --head"))
    assert ray_start_options(head) == {"num_cpus": HEAD_CPUS}
    workers = [ray_start_options(c) for c in commands if c.startswith("ray start --address")]
    assert [w["resources"] for w in workers] == [WORKERS[LEARNER_NODE], WORKERS[ACTOR_NODE]]
    train = next(c for c in commands if c.startswith("qfleet train"))
    assert placement(check_train_command(train, address="HEAD:6379")) == TOPOLOGY_PLACEMENT


def test_compose_starts_the_cluster_tests_topology(compose):
    services = compose["services"]
    assert ray_start_options(" ".join(services["ray-head"]["command"]))["num_cpus"] == HEAD_CPUS
    assert ray_start_options(services["ray-learner"]["command"])["resources"] == WORKERS[LEARNER_NODE]
    assert ray_start_options(services["ray-worker"]["command"])["resources"] == WORKERS[ACTOR_NODE]
    assert ray_start_options(services["ray-gpu-worker"]["command"])["resources"] == WORKERS[LEARNER_NODE]
    train = " ".join(services["train"]["command"])
    assert placement(check_train_command(train)) == TOPOLOGY_PLACEMENT


def test_the_ray_launcher_starts_the_cluster_tests_topology(tmp_path):
    types = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())["available_node_types"]
    assert types["head"]["resources"] == {"CPU": HEAD_CPUS}
    assert types["gpu_learner"]["resources"] == WORKERS[LEARNER_NODE]
    assert types["actor_cpu"]["resources"] == WORKERS[ACTOR_NODE]
    fake_ray = tmp_path / "ray"
    fake_ray.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')  # prints what submit.sh would submit
    fake_ray.chmod(0o755)
    submit = ["bash", str(DEPLOY / "ray" / "submit.sh"), "configs/cartpole.yaml", "c1"]
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "RAY_AUTH_TOKEN": "test-ray-token"}
    result = subprocess.run(submit, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    entry = result.stdout.splitlines()[-1].replace("\\$head_ip", "10.0.0.1")
    assert placement(check_train_command(entry)) == TOPOLOGY_PLACEMENT


def test_kuberay_starts_the_cluster_tests_topology():
    cluster = kuberay_documents()["RayCluster"]["spec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == str(HEAD_CPUS)
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert kuberay_resources(groups["gpu-learner"]) == WORKERS[LEARNER_NODE]
    assert kuberay_resources(groups["actors"]) == WORKERS[ACTOR_NODE]
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    assert placement(check_train_command(job["spec"]["entrypoint"])) == TOPOLOGY_PLACEMENT


def test_the_topology_check_sees_a_drifted_setting():
    drifted = load_config(ROOT / "configs" / "cartpole.yaml", [*train_overrides(), "actors.resources={actors: 2}"])
    assert placement(drifted) != TOPOLOGY_PLACEMENT
    assert ray_start_options('ray start --address=h:1 --resources=\'{"replay": 1, "actors": 4}\'') == {
        "resources": {"replay": 1, "actors": 4}
    }
