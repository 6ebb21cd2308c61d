"""What a GPU user deploys, checked by reading it: Dockerfile.cuda, requirements/cuda.txt, the vLLM
configs, the Ray script and the Kubernetes manifests.

None of it can run here (no Docker engine, no GPU), so each test reads the files and checks what
would otherwise fail only on a GPU machine: an image that never gets healthy, a setting ise
refuses, a probe on the wrong port, a Service that selects no pod.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from server.config.command_line import split_serve_args
from server.config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.cuda"
CUDA_REQUIREMENTS = ROOT / "requirements" / "cuda.txt"
KUBERNETES = ROOT / "configs" / "kubernetes"
VLLM_CONFIGS = sorted((ROOT / "configs").glob("vllm-*.toml"))

# Fields of vLLM's EngineArgs (vllm/engine/arg_utils.py in vllm 0.32.0, the release
# requirements/cuda.txt pins) that the configs and docs use, with the values vLLM accepts where it
# takes a fixed set. vLLM's parser checks them all at start-up, and tests/real/test_vllm_engine.py
# runs each table through it; this catches a misspelt key without importing vLLM (14 s).
VLLM_ENGINE_ARGS: dict[str, set[Any] | None] = {
    "tensor_parallel_size": None,
    "pipeline_parallel_size": None,
    "data_parallel_size": None,
    "distributed_executor_backend": {"mp", "ray", "uni", "external_launcher"},
    "gpu_memory_utilization": None,
    "kv_cache_dtype": {"auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"},
    "enforce_eager": {True, False},
    "speculative_config": None,
}
# vLLM arguments ise itself passes from its own settings (adapters/vllm/args.py): set in [vllm] too,
# they would silently override ise's setting of the same meaning.
SET_BY_ISE = {
    "model",
    "served_model_name",
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "dtype",
    "enable_prefix_caching",
    "quantization",
    "host",
    "port",
}
DOCKER_INSTRUCTIONS = {
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
}


@dataclass(frozen=True)
class Instruction:
    name: str
    args: str


def dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of a Dockerfile: comments dropped, continued lines joined (as Docker does)."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines even between continued ones
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        name, _, args = (pending + stripped).partition(" ")
        instructions.append(Instruction(name.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, "the Dockerfile ends in a continued line"
    return instructions


def only(instructions: list[Instruction], name: str) -> Instruction:
    found = [i for i in instructions if i.name == name]
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for i in instructions:
        if i.name == "ENV":
            for word in shlex.split(i.args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY, options such as --chown left out."""
    result = []
    for i in instructions:
        if i.name == "COPY":
            words = [w for w in shlex.split(i.args) if not w.startswith("--")]
            result.append((words[:-1], words[-1]))
    return result


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"ISE_{name.upper()}", raising=False)


# --- Dockerfile.cuda ---


def test_dockerfile_has_only_docker_instructions() -> None:
    """A line that lost its trailing backslash becomes an unknown instruction and fails the build."""
    unknown = [i.name for i in dockerfile() if i.name not in DOCKER_INSTRUCTIONS]
    assert not unknown, f"not Dockerfile instructions: {unknown}"


def test_dockerfile_base_image_is_pinned_by_tag() -> None:
    base = only(dockerfile(), "FROM").args.split()[0]
    image, _, tag = base.rpartition(":")
    assert image and tag and tag != "latest", f"{base}: pin the base image by tag"
    assert "/" not in tag, f"{base}: pin the base image by tag"
    assert "vllm-openai" not in image, "vLLM is pinned in requirements/cuda.txt, not taken from vLLM's image"


def test_dockerfile_runs_the_server_as_a_non_root_user() -> None:
    instructions = dockerfile()
    entrypoint = next(n for n, i in enumerate(instructions) if i.name == "ENTRYPOINT")
    users = [i.args for i in instructions[:entrypoint] if i.name == "USER"]
    assert users, "no USER before ENTRYPOINT: the server would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert not [i for i in instructions[entrypoint:] if i.name == "USER"]


def test_dockerfile_entrypoint_is_ise_serve_with_vllm(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    """`docker run ise:cuda MODEL --flags` appends MODEL and the flags to the entrypoint: ise must take
    the model from there, serve it with vLLM, listen beyond loopback and pass vLLM's flags to vLLM."""
    instructions = dockerfile()
    # Exec form (a JSON list): ise itself gets SIGTERM on `docker stop` and shuts down gracefully.
    entrypoint = json.loads(only(instructions, "ENTRYPOINT").args)
    assert entrypoint[:2] == ["ise", "serve"]
    assert pyproject()["project"]["scripts"]["ise"] == "ise.cli:main"
    for key, value in env_of(instructions).items():
        if key.startswith("ISE_"):
            monkeypatch.setenv(key, value)
    model = "Qwen/Qwen2.5-7B-Instruct"
    argv = [*entrypoint[2:], model, "--max-model-len", "4k", "--tensor-parallel-size", "2"]
    args = split_serve_args(argv, Settings.cli_flags())
    settings = Settings.load(args.ise)
    assert (settings.model, settings.engine, settings.host) == (model, "vllm", "0.0.0.0")
    assert settings.max_model_len == 4000
    assert args.engine == ["--tensor-parallel-size", "2"]


def test_dockerfile_exposes_and_health_checks_ises_port() -> None:
    instructions = dockerfile()
    port = Settings.model_fields["port"].default
    assert only(instructions, "EXPOSE").args.split() == [str(port)]
    healthcheck = only(instructions, "HEALTHCHECK").args
    _, cmd, command = healthcheck.partition("CMD ")
    assert cmd, "HEALTHCHECK without CMD"
    assert f"http://127.0.0.1:{port}/health" in command
    assert "curl -f" in command or "python" in command, "the check must fail on a 503 from /health"
    start_period = re.search(r"--start-period=(\d+)s", healthcheck)
    assert start_period and int(start_period.group(1)) >= 300, "loading a model takes minutes"


def test_dockerfile_installs_the_pinned_requirements_then_ise() -> None:
    instructions = dockerfile()
    copied = {destination: sources for sources, destination in copies(instructions)}
    runs = [i.args for i in instructions if i.name == "RUN"]
    installs = [re.search(r"pip install -r (\S+)", run) for run in runs]
    requirement_files = [m.group(1) for m in installs if m]
    assert len(requirement_files) == 1, "install requirements/cuda.txt, once"
    sources = copied[requirement_files[0]]
    assert [ROOT / s for s in sources] == [CUDA_REQUIREMENTS]
    assert any(re.search(r"pip install --no-deps \.(\s|$)", run) for run in runs), "ise itself, without re-resolving"


def test_dockerfile_copies_what_installing_ise_needs() -> None:
    copied = {source.rstrip("/") for sources, _ in copies(dockerfile()) for source in sources}
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    packages = {pattern.rstrip("*") for pattern in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", pyproject()["project"]["readme"], "configs", *packages}
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"


def test_dockerfile_keeps_model_caches_on_the_volume() -> None:
    """Weights downloaded into the container's own layer are lost with it, and fill its disk."""
    instructions = dockerfile()
    volumes = json.loads(only(instructions, "VOLUME").args)
    env = env_of(instructions)
    for variable in ("HF_HOME", "XDG_CACHE_HOME"):
        assert any(env.get(variable, "").startswith(volume) for volume in volumes), f"{variable} is not on a volume"


# --- requirements/cuda.txt ---


def pinned_requirements() -> dict[str, Requirement]:
    pins: dict[str, Requirement] = {}
    for line in CUDA_REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} is pinned twice"
        pins[name] = requirement
    return pins


def pinned_version(requirement: Requirement) -> str:
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"{requirement}: pin exact versions, so every build is the same image"
    return specifier.version


def test_cuda_requirements_pin_exact_versions() -> None:
    pins = pinned_requirements()
    for requirement in pins.values():
        pinned_version(requirement)
    assert {"vllm", "torch"} <= set(pins)


def test_cuda_requirements_cover_ises_dependencies_within_range() -> None:
    """The image installs ise with --no-deps: a dependency missing here is an ImportError at start."""
    pins = pinned_requirements()
    for dependency in pyproject()["project"]["dependencies"]:
        wanted = Requirement(dependency)
        name = canonicalize_name(wanted.name)
        assert name in pins, f"{name} (pyproject.toml) is not pinned in requirements/cuda.txt"
        version = pinned_version(pins[name])
        assert wanted.specifier.contains(version, prereleases=True), f"{name}=={version} is outside {wanted}"


# --- the vLLM config files ---


# Each vLLM TOML config: the files in configs/ and the one inside the Kubernetes ConfigMap.
CONFIGS = [*(path.name for path in VLLM_CONFIGS), "kubernetes/configmap.yaml"]


def config_text(name: str) -> str:
    if name.endswith(".yaml"):
        (text,) = manifests()["ConfigMap"]["data"].values()
        return str(text)
    return (ROOT / "configs" / name).read_text()


def load_config(name: str) -> dict[str, Any]:
    return tomllib.loads(config_text(name))


def test_there_are_configs_for_one_gpu_one_node_and_several_nodes() -> None:
    assert {p.name for p in VLLM_CONFIGS} >= {"vllm-single-gpu.toml", "vllm-tp4.toml", "vllm-ray-multinode.toml"}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.usefixtures("clean_env")
def test_config_is_settings_ise_accepts(name: str, tmp_path: Path) -> None:
    config = load_config(name)
    unknown = set(config) - set(Settings.model_fields)
    assert not unknown, f"not ise settings: {sorted(unknown)}"
    assert config["engine"] == "vllm"
    # Loaded as `ise serve --config FILE` loads it, every value checked.
    path = tmp_path / "ise.toml"
    path.write_text(config_text(name))
    settings = Settings.load(["--config", str(path)])
    for key, value in config.items():
        if key in Settings.model_fields:
            assert getattr(settings, key) == value, key


@pytest.mark.parametrize("name", CONFIGS)
def test_config_sizes_the_batch_for_a_gpu(name: str) -> None:
    """Unset, ise hands vLLM its CPU defaults (32 sequences) and vLLM takes the model's whole context."""
    config = load_config(name)
    for key in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        assert key in config, f"{key} unset: vLLM would get ise's CPU default"
    assert config["max_num_seqs"] > Settings.model_fields["max_num_seqs"].default


@pytest.mark.parametrize("name", CONFIGS)
def test_config_vllm_table_has_vllm_engine_arguments(name: str) -> None:
    table: dict[str, Any] = load_config(name)["vllm"]
    unknown = set(table) - set(VLLM_ENGINE_ARGS)
    assert not unknown, f"not vLLM engine arguments (or not in this test's list): {sorted(unknown)}"
    twice = set(table) & (SET_BY_ISE | set(Settings.model_fields))
    assert not twice, f"ise's own settings, set at the top level instead: {sorted(twice)}"
    for key, value in table.items():
        allowed = VLLM_ENGINE_ARGS[key]
        assert allowed is None or value in allowed, f"{key} = {value!r}"
    assert 0 < table.get("gpu_memory_utilization", 0.9) <= 1


def test_standalone_configs_listen_beyond_loopback() -> None:
    for path in VLLM_CONFIGS:
        assert tomllib.loads(path.read_text()).get("host") == "0.0.0.0", path.name


def test_parallel_layouts() -> None:
    def table(name: str) -> dict[str, Any]:
        config: dict[str, Any] = load_config(name)["vllm"]
        return config

    assert table("vllm-single-gpu.toml").get("tensor_parallel_size", 1) == 1
    assert table("vllm-tp4.toml")["tensor_parallel_size"] == 4
    assert table("vllm-tp4.toml").get("pipeline_parallel_size", 1) == 1
    multinode = table("vllm-ray-multinode.toml")
    assert multinode["distributed_executor_backend"] == "ray"
    assert multinode["tensor_parallel_size"] > 1 and multinode["pipeline_parallel_size"] > 1
    assert "ray" in pinned_requirements(), "the Ray backend needs ray in the image"


def test_ray_script_is_valid_bash_and_starts_the_multinode_config() -> None:
    script = ROOT / "configs" / "ray" / "start-cluster.sh"
    assert script.stat().st_mode & 0o111, "not executable"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert "vllm-ray-multinode.toml" in text and "ise serve --engine vllm" in text


# --- Kubernetes ---


def manifests() -> dict[str, dict[str, Any]]:
    """The Kubernetes objects of configs/kubernetes by kind, each kind once."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert isinstance(document, dict), path.name
            kind = document["kind"]
            assert kind not in objects, f"two {kind}s"
            objects[kind] = document
    return objects


def container() -> dict[str, Any]:
    (only_container,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only_container
    return result


def container_port(port: int | str) -> int:
    """A port by number or by the container's name for it, as probes and Services give it."""
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    number = ports[port] if isinstance(port, str) else port
    assert number in ports.values(), f"port {port} is not a port of the container"
    return number


def test_manifests_are_kubernetes_objects() -> None:
    for kind, document in manifests().items():
        assert document.get("apiVersion"), kind
        assert document.get("metadata", {}).get("name") or kind == "Kustomization", kind


def test_manifests_match_kubernetes_schemas() -> None:
    """Kubernetes' own schemas, strictly: a misspelt or misplaced field is an error, not ignored."""
    for kind, document in manifests().items():
        if kind in {"Kustomization", "PodMonitor"}:
            continue  # kustomize's and the Prometheus Operator's kinds: no schema in the package
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_applies_every_manifest() -> None:
    kustomization = manifests()["Kustomization"]
    listed = set(kustomization["resources"])
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files
    (image,) = kustomization["images"]
    assert container()["image"].split(":")[0] == image["name"], "kustomize would not replace the image"


def test_deployment_requests_a_gpu() -> None:
    resources = container()["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert (
        resources["requests"].get("nvidia.com/gpu", resources["limits"]["nvidia.com/gpu"])
        == (resources["limits"]["nvidia.com/gpu"])
    ), "Kubernetes refuses GPU requests that differ from limits"


def test_deployment_probes_health_on_the_port_ise_listens_on() -> None:
    spec = container()
    env = {e["name"]: e.get("value") for e in spec.get("env", [])}
    listening = int(env.get("ISE_PORT") or Settings.model_fields["port"].default)
    assert container_port(listening) == listening
    assert env.get("ISE_HOST", "0.0.0.0") == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = spec[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert container_port(get["port"]) == listening, probe
    startup = spec["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model loading takes minutes"


def test_deployment_has_no_service_links_for_ise_to_misread() -> None:
    """A Service named ise gives pods ISE_PORT=tcp://...: ise would refuse it as its port."""
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    assert pod.get("enableServiceLinks") is False
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_deployment_selects_its_own_pods_and_runs_as_the_images_user() -> None:
    deployment = manifests()["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] >= 2, "data-parallel scale-out: several replicas behind the Service"
    uid = re.search(r"useradd .*--uid (\d+)", "\n".join(i.args for i in dockerfile() if i.name == "RUN"))
    assert uid, "Dockerfile.cuda creates no user with a fixed uid"
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["fsGroup"] == int(uid.group(1)), "the cache volume must be writable"


def test_deployment_mounts_config_and_cache() -> None:
    objects = manifests()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) <= set(volumes)
    env = {e["name"]: e.get("value") for e in container()["env"]}
    config_volume = next(name for name, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    config_path = Path(env["ISE_CONFIG"])
    assert str(config_path.parent) == mounts[config_volume]
    assert config_path.name in objects["ConfigMap"]["data"]
    assert env["ISE_MODEL"], "no model"
    (cache_volume,) = json.loads(only(dockerfile(), "VOLUME").args)
    cache = next(name for name, path in mounts.items() if path == cache_volume)
    assert volumes[cache]["persistentVolumeClaim"]["claimName"] == objects["PersistentVolumeClaim"]["metadata"]["name"]
    assert mounts.get("shm") == "/dev/shm" and volumes["shm"]["emptyDir"]["medium"] == "Memory"


def test_service_reaches_the_deployments_pods() -> None:
    objects = manifests()
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= labels.items(), "the Service would select no pod"
    for port in service["spec"]["ports"]:
        container_port(port["targetPort"])


def test_prometheus_scrapes_metrics() -> None:
    objects = manifests()
    template = objects["Deployment"]["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    container_port(int(annotations["prometheus.io/port"]))
    monitor = objects["PodMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["path"] == "/metrics"
        container_port(endpoint["port"])


def test_autoscaler_scales_the_deployment_on_a_metric_ise_exports() -> None:
    objects = manifests()
    hpa = objects["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", objects["Deployment"]["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    exported = (ROOT / "server" / "gateway" / "metrics.py").read_text()
    for metric in hpa["spec"]["metrics"]:
        name = metric["pods"]["metric"]["name"]
        assert f'"{name}"' in exported, f"{name}: not a metric ise exports"


# --- docs/deploy.md ---


def test_deploy_doc_names_files_that_exist() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    paths = set(re.findall(r"`((?:configs|requirements)/[\w./-]+|Dockerfile\.cuda)`", text))
    assert {"Dockerfile.cuda", "configs/vllm-tp4.toml"} <= paths
    missing = [p for p in sorted(paths) if not (ROOT / p).exists()]
    assert not missing, f"docs/deploy.md names files that do not exist: {missing}"
