"""The deployment files are valid for the tools that read them (real binaries and schemas; no
Docker engine or Kubernetes here), agree with each other, and start runs with valid configs."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from system.cli import build_parser
from system.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def check_train_command(command: str) -> None:
    """`command` (a shell line holding `qfleet train ...`) parses, and its config and --set keys load."""
    words = shlex.split(command[command.index("qfleet train") :].rstrip("'\""))
    args = build_parser().parse_args(words[1:])
    assert args.command == "train" and args.path.startswith("configs/")
    config = load_config(ROOT / args.path, args.set)
    assert config.ray.address == "auto" and config.redis.url.startswith("redis://")


def test_prometheus_config_passes_promtool():
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "qfleet")
    assert job["honor_labels"] is True and job["http_sd_configs"][0]["url"] == "http://discovery:9101/targets"


@pytest.fixture(scope="module")
def compose() -> dict:
    quiet = subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT)}  # defaults only, whatever this shell exports
    full = subprocess.run(["docker-compose", "config"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert full.returncode == 0, full.stderr
    return yaml.safe_load(full.stdout)


def test_compose_has_every_service_and_scales_workers(compose):
    services = compose["services"]
    assert {"redis", "prometheus", "grafana", "ray-head", "ray-worker", "train", "discovery"} <= set(services)
    worker = services["ray-worker"]
    # `--scale ray-worker=N` needs no fixed name and no published port.
    assert "container_name" not in worker and "ports" not in worker
    assert "--address=ray-head:6380" in worker["command"] and "--port=6380" in services["ray-head"]["command"]
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
    path = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    result = subprocess.run([*submit, "--set", "actors.num_actors=8"], capture_output=True, text=True, env=path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["job", "submit"] and "--submission-id=qfleet-b1" in lines
    entry = lines[-1].replace("\\$head_ip", "10.0.0.1").replace("$head_ip", "10.0.0.1")
    check_train_command(entry)
    assert "actors.num_actors=8" in entry
    usage = subprocess.run(["bash", str(DEPLOY / "ray" / "submit.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_kuberay_manifests_agree_with_each_other():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kuberay" / "raycluster.yaml").read_text())}
    cluster, service, claim = docs["RayCluster"], docs["Service"], docs["PersistentVolumeClaim"]
    assert cluster["apiVersion"] == "ray.io/v1" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert cluster["spec"]["workerGroupSpecs"][0]["groupName"] == "actors"  # docs/deploy.md's kubectl patch path
    assert set(groups) == {"actors", "gpu-learner", "android-emulators"}

    def resources(group) -> dict:  # KubeRay's quoted-JSON form: '"{\"name\": n}"'
        return json.loads(json.loads(group["rayStartParams"].get("resources", '"{}"')))

    assert resources(groups["android-emulators"]) == {"android_emulator": 4}
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
