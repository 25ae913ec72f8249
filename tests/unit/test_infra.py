"""infra/: the cluster config against Ray's own schema, the KubeRay manifest, the images."""

from __future__ import annotations

import configparser
import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DOCKERFILE_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def _yaml(path: str) -> dict:
    return yaml.safe_load((INFRA / path).read_text())


def test_ray_cluster_config_passes_rays_own_schema():
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import validate_config

    config = _yaml("aws/ray-cluster.yaml")
    validate_config(config)
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"]["CPU"] == 0  # no training on the head
    gpu = [n for n in nodes.values() if n["resources"].get("GPU", 0) > 0]
    assert gpu and all("IamInstanceProfile" in n["node_config"] for n in nodes.values())

    broken = copy.deepcopy(config)
    broken["max_wokers"] = 3  # the schema must catch a misspelled key
    with pytest.raises(ValidationError):
        validate_config(broken)


def test_rayjob_manifest_has_kuberays_fields_and_a_valid_entrypoint():
    from jobs.train import build_parser, config_from_args

    job = _yaml("k8s/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == _pin("ray")
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
    assert all(g["groupName"] for g in cluster["workerGroupSpecs"])
    head_env = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    secrets = [e for e in head_env if re.search(r"TOKEN|PASSWORD|USERNAME", e["name"])]
    assert len(secrets) == 2 and all("valueFrom" in e for e in secrets), "by reference only"

    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.train"]
    cfg = config_from_args(build_parser().parse_args(argv[3:]))  # our own validation
    assert cfg.scaling.use_gpu and cfg.data.uri.startswith("s3://")


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    out = []
    for line in lines:
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest))
    return out


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_parse(name):
    steps = _instructions(INFRA / "docker" / name)
    assert steps[0][0] == "FROM"
    unknown = [word for word, _ in steps if word not in DOCKERFILE_INSTRUCTIONS]
    assert not unknown, unknown
    assert any(word == "CMD" for word, _ in steps)


def _pin(package: str) -> str:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    for line in cfg["options"]["install_requires"].splitlines():
        match = re.match(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.*]+)", line.strip())
        if match:
            return match.group(2)
    raise AssertionError(f"{package} is not pinned with == in setup.cfg")


def _image_pins(name: str) -> dict[str, str]:
    text = (INFRA / "docker" / name).read_text()
    return dict(re.findall(r"\b([a-z][\w-]*)==([\d.]+)", text))


def test_cpu_image_pins_match_setup_cfg_and_the_makefile():
    pins = _image_pins("Dockerfile.cpu")
    assert pins["mxnet"] == _pin("mxnet")
    assert pins["numpy"] == _pin("numpy")
    makefile_horovod = re.search(r"horovod==([\d.]+)", (REPO / "Makefile").read_text())
    assert makefile_horovod and pins["horovod"] == makefile_horovod.group(1)
    gpu = _image_pins("Dockerfile.gpu")
    assert gpu["mxnet-cu112"] == pins["mxnet"] and gpu["horovod"] == pins["horovod"]
    assert gpu["numpy"] == pins["numpy"]


def test_check_private_accepts_private_networks_only():
    from infra.mlflow.server import ServerError, check_private

    for host in ("127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.20", "::1"):
        check_private(host)
    for host in ("0.0.0.0", "8.8.8.8", "mlflow.example.com", "::"):
        with pytest.raises(ServerError):
            check_private(host)


def _containers(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    pods = [g["template"]["spec"] for g in groups] + [job["spec"]["submitterPodTemplate"]["spec"]]
    return [c for pod in pods for c in pod["containers"]]


def test_rayjob_runs_ray_with_token_auth_and_no_secret_in_plain_text():
    """Token auth by the operator (authOptions): it puts the token in every Ray container
    and uses it itself to poll the job's status; no container sets Ray's token by hand."""
    job = _yaml("k8s/rayjob.yaml")
    auth = job["spec"]["rayClusterSpec"]["authOptions"]
    assert auth == {"mode": "token", "secretName": "ray-auth-token"}
    for container in _containers(job):
        env = {e["name"]: e for e in container.get("env", [])}
        assert "RAY_AUTH_TOKEN" not in env and "RAY_AUTH_MODE" not in env, container["name"]
        for name, entry in env.items():
            if re.search(r"TOKEN|PASSWORD|SECRET|KEY", name):
                assert "value" not in entry, f"{container['name']}: {name} in plain text"


def test_every_ray_pod_has_the_mlflow_credentials_from_a_secret():
    """The driver (head) opens the run, rank 0 (on any worker pod) logs the metrics."""
    job = _yaml("k8s/rayjob.yaml")
    ray_pods = [c for c in _containers(job) if c["name"] in ("ray-head", "ray-worker")]
    assert len(ray_pods) == 2
    for container in ray_pods:
        env = {e["name"]: e for e in container.get("env", [])}
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth", container


def test_ray_cluster_config_starts_every_node_with_token_auth_on_loopback_dashboard():
    config = _yaml("aws/ray-cluster.yaml")
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    for commands in (head, workers):
        assert "export RAY_AUTH_MODE=token;" in commands
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert config["file_mounts"] == {
        "~/.ray/auth_token": "~/.ray/auth_token",
        "~/.mlflow/credentials": "~/.mlflow/credentials",  # a search's trials log from any node
    }
    assert not re.search(r"(?i)(password|secret|token)\s*[=:]\s*\S", head + workers)


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_images_run_as_an_unprivileged_user(name):
    users = [
        rest.split()[0] for word, rest in _instructions(INFRA / "docker" / name) if word == "USER"
    ]
    assert users and users[-1] not in ("root", "0"), users


def test_docker_context_leaves_out_local_state_and_keys():
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "data", "runs", "mlflow.db", ".git"} <= ignored
    keys = {"infra/local/object-store.env", "infra/local/s3-identities.json"}
    assert keys <= ignored, "the local object store's keys would be in every image"


def test_postgres_password_is_never_on_a_command_line():
    """The first start of the MLflow server creates its PostgreSQL role with a password: every
    command it runs (real initdb, pg_ctl, psql) is recorded, and none holds the password."""
    import secrets
    import shutil
    import subprocess
    import tempfile

    import psycopg

    from infra.mlflow import server
    from infra.processes import free_port

    commands: list[list[str]] = []
    real_run = subprocess.run

    def recording_run(cmd, *args, **kwargs):
        commands.append([str(c) for c in cmd])
        return real_run(cmd, *args, **kwargs)

    password = f"pw-{secrets.token_hex(8)}"
    pgdata = Path(tempfile.mkdtemp(prefix="mxtrain-pg-", dir="/tmp"))  # postgres user reaches it
    postgres = server.Postgres(pgdata, free_port())
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(server.subprocess, "run", recording_run)
            postgres.init(password)
        assert any("psql" in " ".join(c) for c in commands)
        assert not [c for c in commands if any(password in arg for arg in c)]
        with psycopg.connect(  # and the role has that password
            host="127.0.0.1", port=postgres.port, user="mlflow", password=password,
            dbname="mlflow",
        ):  # fmt: skip
            pass
    finally:
        postgres.stop()
        shutil.rmtree(pgdata, ignore_errors=True)


def test_peak_memory_is_the_processs_own_not_its_parents():
    """A child of a process that held 400 MB reports its own peak: ru_maxrss, kept by Linux
    across fork and exec, said 400 MB and more (make bench's reader figure did)."""
    import subprocess
    import sys

    from pipeline.peak_memory import peak_rss_mb

    held = bytearray(400 * 2**20)
    held[::4096] = b"x" * len(held[::4096])  # every page touched: resident
    assert peak_rss_mb() >= 400
    code = "from pipeline.peak_memory import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 1 < float(out.stdout) < 200
    del held
