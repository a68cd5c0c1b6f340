"""Static checks of the deployment files: docker-compose.yml, deploy/docker, deploy/k8s.

No Docker engine or cluster is needed: the files are parsed and checked against the
code they start (the `renderfarm` command line and the RENDERFARM_* settings), so a
renamed flag, a misspelt variable or a lost Redis setting fails here, not in production.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from renderfarm.cli import build_parser
from shared.config import Settings
from shared.vocabulary import Hardware

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKER_DIR = ROOT / "deploy" / "docker"
K8S_DIR = ROOT / "deploy" / "k8s"
KEDA_DIR = K8S_DIR / "keda"
KEDA_OVERLAY = ROOT / "deploy" / "k8s-keda"
SCALING = ROOT / "deploy" / "SCALING.md"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HARDWARE = tuple(Hardware)
DOCKERFILES = {hw: DOCKER_DIR / f"Dockerfile.{hw}" for hw in HARDWARE}
SETTINGS_ENV = {f"RENDERFARM_{name.upper()}" for name in Settings.model_fields}
JOB_TIME_LIMIT = "RENDERFARM_JOB_TIME_LIMIT_S"


# --- helpers --------------------------------------------------------------------------


def parse_renderfarm(argv: list[str], where: str):
    """Parse a `renderfarm ...` command line with the real CLI parser, or fail."""
    assert argv and argv[0] == "renderfarm", f"{where}: not a renderfarm command: {argv}"
    try:
        return build_parser().parse_args([str(a) for a in argv[1:]])
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(map(str, argv))}` is not a valid renderfarm command")


def as_argv(cmd: str | list | None) -> list[str]:
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def flag_values(argv: list[str]) -> dict[str, str]:
    """`--name value` pairs of a command line (redis-server style)."""
    return {a[2:]: b for a, b in zip(argv, argv[1:], strict=False) if a.startswith("--")}


def duration_s(text: str) -> float:
    """A compose duration such as `61m`, `1h30m` or `90s`, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


@cache
def k8s_docs() -> tuple[tuple[Path, dict[str, Any]], ...]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")) + sorted(K8S_DIR.glob("*.yml")):
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return tuple(docs)


def k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        doc
        for _, doc in k8s_docs()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]


def one_k8s(kind: str, name: str) -> dict[str, Any]:
    found = k8s(kind, name)
    assert len(found) == 1, f"expected one {kind} {name!r} in {K8S_DIR}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def container_argv(container: dict[str, Any]) -> list[str]:
    return as_argv(container.get("command")) + as_argv(container.get("args"))


def configmap_env() -> dict[str, str]:
    return {k: str(v) for k, v in one_k8s("ConfigMap", "renderfarm-config")["data"].items()}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [rest for instr, rest in self.instructions if instr == instruction]


@cache
def dockerfile(path: Path) -> tuple[dict[str, str], tuple[Stage, ...]]:
    """(global ARG defaults, stages) of a Dockerfile; comments dropped, lines joined."""
    logical, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif not stages:
            assert instr == "ARG", f"{path.name}: {instr} before the first FROM"
            key, _, value = rest.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((instr, rest))
    assert stages, f"{path.name}: no FROM"
    return global_args, tuple(stages)


def stage_chain(path: Path, name: str | None = None) -> list[Stage]:
    """The stage (last one by default) and the stages it is built FROM, nearest first."""
    _, stages = dockerfile(path)
    by_name = {s.name: s for s in stages}
    stage = by_name[name] if name else stages[-1]
    chain = [stage]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return chain


def base_image(path: Path, name: str | None = None) -> str:
    global_args, _ = dockerfile(path)
    base = stage_chain(path, name)[-1].base
    return re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), base)


def stage_env(path: Path, name: str | None = None) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in reversed(stage_chain(path, name)):
        for rest in stage.all("ENV"):
            for token in shlex.split(rest):
                key, sep, value = token.partition("=")
                assert sep, f"{path.name}: use ENV KEY=value, not {rest!r}"
                env[key] = value
    return env


def stage_last(path: Path, instruction: str, name: str | None = None) -> str | None:
    for stage in stage_chain(path, name):
        found = stage.all(instruction)
        if found:
            return found[-1]
    return None


def exec_form(path: Path, rest: str) -> list[str]:
    """A CMD/ENTRYPOINT in exec (JSON) form: SIGTERM reaches the program, not a shell."""
    try:
        argv = json.loads(rest)
    except json.JSONDecodeError:
        pytest.fail(f"{path.name}: {rest!r} is not exec (JSON array) form")
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), rest
    return argv


# --- docker-compose.yml ---------------------------------------------------------------


def test_compose_parses_with_the_expected_services():
    assert isinstance(compose(), dict)
    expected = {"redis", "minio", "minio-setup", "demo-models", "dashboard", "scheduler", "flower"}
    expected |= {f"worker-{hw}" for hw in HARDWARE}
    assert expected <= set(services())
    used = set()
    for svc in services().values():
        used |= {v.split(":")[0] for v in svc.get("volumes", []) if not v.startswith((".", "/"))}
    assert used <= set(compose().get("volumes") or {}), "named volume not declared"


def test_compose_renderfarm_commands_parse():
    checked = []
    for name, svc in services().items():
        for key in ("entrypoint", "command"):
            argv = as_argv(svc.get(key))
            if argv and argv[0] == "renderfarm":
                parse_renderfarm(argv, f"docker-compose.yml services.{name}.{key}")
                checked.append(name)
    assert {"dashboard", "demo-models", "scheduler", "worker-cpu"} <= set(checked)


@pytest.mark.parametrize("hardware", HARDWARE)
def test_compose_worker_per_class(hardware):
    name = f"worker-{hardware}"
    svc = services()[name]
    args = parse_renderfarm(as_argv(svc["command"]), name)
    assert (args.command, args.hardware) == ("worker", hardware)
    # `docker compose up --scale worker-cpu=3` needs generated container names.
    assert "container_name" not in svc
    assert svc["depends_on"]["demo-models"]["condition"] == "service_completed_successfully"
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(v.split(":")[1] == "/models" for v in svc["volumes"])
    env = service_env(svc)
    assert env["RENDERFARM_MODELS_DIR"] == "/models"
    # Warm shutdown: the worker may finish its job before it is killed.
    assert svc.get("init") is True
    assert duration_s(svc["stop_grace_period"]) > int(env[JOB_TIME_LIMIT])


def test_compose_profiles_and_gpu_reservation():
    svcs = services()
    assert "profiles" not in svcs["worker-cpu"]
    assert svcs["worker-openvino"]["profiles"] == ["openvino"]
    assert svcs["worker-gpu"]["profiles"] == ["gpu"]
    devices = svcs["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_compose_dashboard_on_port_8000():
    svc = services()["dashboard"]
    args = parse_renderfarm(as_argv(svc["command"]), "dashboard")
    assert (args.command, args.host, args.port) == ("dashboard", "0.0.0.0", 8000)
    assert any(str(p).endswith(":8000") for p in svc["ports"])
    build = svc["build"]
    assert build["target"] in {s.name for s in dockerfile(ROOT / build["dockerfile"])[1]}


def test_compose_builds_point_at_real_dockerfiles_and_stages():
    for name, svc in services().items():
        build = svc.get("build")
        if build is None:
            continue
        path = ROOT / build.get("context", ".") / build["dockerfile"]
        assert path.is_file(), f"{name}: {path} does not exist"
        if "target" in build:
            assert build["target"] in {s.name for s in dockerfile(path)[1]}, name


def test_compose_storage_is_the_minio_bucket():
    svcs = services()
    setup = " ".join(as_argv(svcs["minio-setup"].get("command")))
    for name in ("dashboard", "demo-models", *(f"worker-{hw}" for hw in HARDWARE)):
        env = service_env(svcs[name])
        m = re.fullmatch(r"s3://([a-z0-9.-]+)(/.*)?", env["RENDERFARM_STORAGE_URL"])
        assert m, f"{name}: storage is not an s3:// URL"
        assert f"mb --ignore-existing farm/{m.group(1)}" in setup, "bucket is never created"
        assert env["RENDERFARM_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["RENDERFARM_REDIS_URL"].startswith("redis://redis:6379/")
        assert env["RENDERFARM_S3_ACCESS_KEY_ID"] and env["RENDERFARM_S3_SECRET_ACCESS_KEY"]
    for name in ("dashboard", *(f"worker-{hw}" for hw in HARDWARE)):
        cond = svcs[name]["depends_on"]["minio-setup"]["condition"]
        assert cond == "service_completed_successfully", name
    # The one-shot model writer must be able to write to the store.
    assert "models:/models" in svcs["demo-models"]["volumes"]


def test_redis_is_persistent_and_never_evicts():
    svc = services()["redis"]
    assert str(svc["image"]).startswith("redis:7")
    flags = flag_values(as_argv(svc["command"]))
    assert flags.get("appendonly") == "yes"
    assert flags.get("maxmemory-policy") == "noeviction"
    assert any(v.endswith(":/data") for v in svc["volumes"])

    sts = one_k8s("StatefulSet", "redis")
    (container,) = pod_spec(sts)["containers"]
    flags = flag_values(container_argv(container))
    assert flags.get("appendonly") == "yes"
    assert flags.get("maxmemory-policy") == "noeviction"
    assert sts["spec"]["volumeClaimTemplates"], "redis data is not persisted"


# --- settings ---------------------------------------------------------------------------


def test_every_renderfarm_variable_is_a_setting():
    files = [COMPOSE, SCALING, *DOCKER_DIR.glob("Dockerfile*"), *K8S_DIR.glob("*.y*ml")]
    files += [*KEDA_DIR.glob("*.yaml"), *PROMETHEUS_DIR.glob("*.yml"), *GRAFANA_DIR.glob("*.json")]
    used: dict[str, set[str]] = {}
    for path in files:
        for var in re.findall(r"\bRENDERFARM_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
            used.setdefault(var, set()).add(path.name)
    unknown = {var: sorted(where) for var, where in used.items() if var not in SETTINGS_ENV}
    assert not unknown, f"not fields of shared.config.Settings: {unknown}"
    assert {"RENDERFARM_REDIS_URL", "RENDERFARM_STORAGE_URL", "RENDERFARM_MODELS_DIR"} <= set(used)


def settings_from(env: dict[str, str], where: str) -> Settings:
    values = {k.removeprefix("RENDERFARM_").lower(): v for k, v in env.items()}
    values = {k: v for k, v in values.items() if k in Settings.model_fields}
    try:
        return Settings(**values)
    except Exception as exc:
        pytest.fail(f"{where}: RENDERFARM_* values do not validate: {exc}")


def test_compose_and_k8s_settings_values_validate():
    for name, svc in services().items():
        env = service_env(svc)
        if any(k.startswith("RENDERFARM_") for k in env):
            settings_from(env, f"docker-compose.yml services.{name}")
    cm = configmap_env()
    settings = settings_from(cm, "ConfigMap renderfarm-config")
    assert settings.storage_url.startswith("s3://")
    assert str(settings.models_dir) == "/models"
    secret = one_k8s("Secret", "renderfarm-s3")["stringData"]
    assert set(secret) == {"RENDERFARM_S3_ACCESS_KEY_ID", "RENDERFARM_S3_SECRET_ACCESS_KEY"}


# --- Dockerfiles ----------------------------------------------------------------------


@pytest.mark.parametrize("hardware", HARDWARE)
def test_dockerfile_commands_parse(hardware):
    path = DOCKERFILES[hardware]
    _, stages = dockerfile(path)
    for stage in stages:
        for instr in ("CMD", "ENTRYPOINT"):
            for rest in stage.all(instr):
                argv = exec_form(path, rest)
                if argv[0] == "renderfarm":
                    parse_renderfarm(argv, f"{path.name} stage {stage.name} {instr}")
    # The default build target is the worker for this hardware class.
    assert stage_last(path, "ENTRYPOINT") is None
    args = parse_renderfarm(exec_form(path, stage_last(path, "CMD")), path.name)
    assert (args.command, args.hardware) == ("worker", hardware)


def test_cpu_dockerfile_has_a_dashboard_target():
    path = DOCKERFILES["cpu"]
    args = parse_renderfarm(exec_form(path, stage_last(path, "CMD", "dashboard")), "dashboard")
    assert (args.command, args.host, args.port) == ("dashboard", "0.0.0.0", 8000)
    health = stage_last(path, "HEALTHCHECK", "dashboard")
    assert health and f":{args.port}/healthz" in health
    assert str(args.port) in (stage_last(path, "EXPOSE", "dashboard") or "")


@pytest.mark.parametrize("hardware", HARDWARE)
def test_dockerfile_runtime(hardware):
    path = DOCKERFILES[hardware]
    base = base_image(path)
    if hardware == "gpu":
        assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", base), base
        assert "python3.11" in " ".join(s for st in dockerfile(path)[1] for s in st.all("RUN"))
    else:
        assert base.startswith("python:3.11-slim"), base
    env = stage_env(path)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["RENDERFARM_MODELS_DIR"] == "/models"
    user = stage_last(path, "USER")
    assert user and user.split(":")[0] not in ("root", "0"), "image runs as root"


@pytest.mark.parametrize("hardware", HARDWARE)
def test_dockerfile_copies_only_what_the_package_needs(hardware):
    path = DOCKERFILES[hardware]
    for stage in dockerfile(path)[1]:
        for rest in stage.all("COPY") + stage.all("ADD"):
            words = [w for w in rest.split() if not w.startswith("--")]
            if "--from=" in rest:
                continue
            sources = words[:-1]
            assert "." not in sources, f"{path.name}: copies the whole build context"
            for src in sources:
                assert (ROOT / src).exists(), f"{path.name}: COPY source {src} does not exist"


# --- Kubernetes -------------------------------------------------------------------------


def test_k8s_documents_are_well_formed():
    docs = k8s_docs()
    assert len(docs) >= 8
    for path, doc in docs:
        assert isinstance(doc, dict), path.name
        assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: no apiVersion/kind"
        if doc["kind"] != "Kustomization":
            assert doc.get("metadata", {}).get("name"), f"{path.name}: {doc['kind']} unnamed"
    (kust,) = k8s("Kustomization")
    files = {p.name for p, _ in docs if p.name != "kustomization.yaml"}
    assert set(kust["resources"]) == files


def k8s_containers():
    for kind in ("Deployment", "StatefulSet", "Job"):
        for doc in k8s(kind):
            for container in pod_spec(doc)["containers"]:
                yield doc, container


def test_k8s_renderfarm_commands_parse_and_refs_exist():
    configmaps = {d["metadata"]["name"] for d in k8s("ConfigMap")}
    secrets = {d["metadata"]["name"] for d in k8s("Secret")}
    claims = {d["metadata"]["name"] for d in k8s("PersistentVolumeClaim")}
    checked = 0
    for doc, container in k8s_containers():
        where = f"{doc['kind']} {doc['metadata']['name']}"
        argv = container_argv(container)
        if argv and argv[0] == "renderfarm":
            parse_renderfarm(argv, where)
            checked += 1
        for ref in container.get("envFrom", []):
            if "configMapRef" in ref:
                assert ref["configMapRef"]["name"] in configmaps, where
            if "secretRef" in ref:
                assert ref["secretRef"]["name"] in secrets, where
        for env in container.get("env", []):
            assert not env["name"].startswith("RENDERFARM_") or env["name"] in SETTINGS_ENV
        for vol in pod_spec(doc).get("volumes", []):
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in claims, where
    assert checked >= 3 + len(HARDWARE)


@pytest.mark.parametrize("hardware", HARDWARE)
def test_k8s_worker_deployments(hardware):
    dep = one_k8s("Deployment", f"renderfarm-worker-{hardware}")
    spec = pod_spec(dep)
    (container,) = spec["containers"]
    args = parse_renderfarm(container_argv(container), hardware)
    assert (args.command, args.hardware) == ("worker", hardware)
    # Warm shutdown finishes the running job: the grace period outlasts the longest job.
    assert spec["terminationGracePeriodSeconds"] > int(configmap_env()[JOB_TIME_LIMIT])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"].get("readOnly") is True
    limits = container["resources"].get("limits", {})
    if hardware == "gpu":
        # One worker process per GPU: a pod gets exactly one.
        assert limits.get("nvidia.com/gpu") == 1
    else:
        assert "nvidia.com/gpu" not in limits


def test_k8s_dashboard_service_reaches_the_dashboard():
    dep = one_k8s("Deployment", "renderfarm-dashboard")
    (container,) = pod_spec(dep)["containers"]
    args = parse_renderfarm(container_argv(container), "dashboard")
    assert args.command == "dashboard"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.port in ports.values() and args.host == "0.0.0.0"
    svc = one_k8s("Service", "renderfarm-dashboard")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    for port in svc["spec"]["ports"]:
        target = port["targetPort"]
        assert ports.get(target, target) == args.port


# --- the scheduler ----------------------------------------------------------------------


def test_the_scheduler_runs_in_compose_and_k8s():
    svc = services()["scheduler"]
    assert parse_renderfarm(as_argv(svc["command"]), "scheduler").command == "scheduler"
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service_env(svc)["RENDERFARM_REDIS_URL"].startswith("redis://redis:6379/")

    dep = one_k8s("Deployment", "renderfarm-scheduler")
    (container,) = pod_spec(dep)["containers"]
    assert parse_renderfarm(container_argv(container), "scheduler").command == "scheduler"
    # A standby takes over from the lock holder; each serves its metrics on 9101.
    assert dep["spec"]["replicas"] >= 2
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9101}
    svc = one_k8s("Service", "renderfarm-scheduler")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(9101, "metrics")]


# --- Flower -----------------------------------------------------------------------------

FLOWER_ARGV = ["celery", "--app", "scheduler.celery_app", "flower", "--port=5555"]


def flower_script() -> str:
    """The shell line the compose service `flower` runs, as the container's sh sees it."""
    argv = as_argv(services()["flower"]["command"])
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3, argv
    return argv[2].replace("$$", "$")  # compose's escape for a literal $


def test_compose_flower_service():
    svc = services()["flower"]
    assert svc["profiles"] == ["ops"]
    # After its guard, the service runs exactly the image's command.
    guard, _, run = flower_script().rpartition("exec ")
    assert "FLOWER_BASIC_AUTH" in guard
    assert shlex.split(run) == FLOWER_ARGV
    build = svc["build"]
    path = ROOT / build["dockerfile"]
    assert exec_form(path, stage_last(path, "CMD", build["target"])) == FLOWER_ARGV
    assert "5555" in (stage_last(path, "EXPOSE", build["target"]) or "")
    assert svc["ports"] == ["127.0.0.1:5555:5555"]  # loopback only: basic auth over plain HTTP
    env = service_env(svc)
    assert env["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    assert env["FLOWER_READ_ONLY"] == "${FLOWER_READ_ONLY:-true}"  # tests/test_flower.py
    assert (
        env["RENDERFARM_REDIS_URL"] == service_env(services()["dashboard"])["RENDERFARM_REDIS_URL"]
    )
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("value", [None, ""])
def test_compose_flower_refuses_to_start_without_basic_auth(value):
    env = {"PATH": "/usr/bin:/bin"}  # no celery on it: the guard must stop before
    if value is not None:
        env["FLOWER_BASIC_AUTH"] = value
    out = subprocess.run(
        ["sh", "-c", flower_script()], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    assert "set FLOWER_BASIC_AUTH=user:password" in out.stderr


def test_flower_image_pins_the_tested_flower():
    (pin,) = [
        d for d in PYPROJECT["project"]["optional-dependencies"]["test"] if d.startswith("flower")
    ]
    path = DOCKERFILES["cpu"]
    runs = " ".join(stage_chain(path, "flower")[0].all("RUN"))
    assert f'"{pin}"' in runs, f"the flower image does not install {pin}"
    user = stage_last(path, "USER", "flower")
    assert user and user.split(":")[0] not in ("root", "0"), "flower runs as root"


@pytest.mark.parametrize("hardware", HARDWARE)
def test_dockerfile_copies_every_package(hardware):
    """`pip install .` installs what pyproject's package list names: each must be copied."""
    packages = {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    path = DOCKERFILES[hardware]
    copied = set()
    for stage in dockerfile(path)[1]:
        for rest in stage.all("COPY"):
            if "--from=" not in rest:
                copied |= {w.rstrip("/") for w in rest.split()[:-1] if not w.startswith("--")}
    assert packages <= copied, f"{path.name} does not copy {sorted(packages - copied)}"


# --- KEDA -------------------------------------------------------------------------------

SERVICE_HOST = re.compile(
    r"(?P<service>[a-z0-9-]+)\.(?P<namespace>[a-z0-9-]+)\.svc(\.cluster\.local)?"
)


@cache
def keda_docs() -> tuple[dict[str, Any], ...]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KEDA_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return tuple(docs)


def keda_component() -> dict[str, Any]:
    return yaml.safe_load((KEDA_DIR / "kustomization.yaml").read_text())


def keda(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in keda_docs() if d["kind"] == kind}


def base_namespace() -> str:
    (kust,) = k8s("Kustomization")
    return kust["namespace"]


def scaled_object(hardware: str) -> dict[str, Any]:
    found = [
        so
        for so in keda("ScaledObject").values()
        if so["spec"]["scaleTargetRef"]["name"] == f"renderfarm-worker-{hardware}"
    ]
    assert len(found) == 1, (
        f"expected one ScaledObject for the {hardware} workers, found {len(found)}"
    )
    return found[0]


def test_keda_is_an_optional_component_on_top_of_the_base():
    component = keda_component()
    assert component["kind"] == "Component"
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert sorted(component["resources"]) == sorted(
        p.name for p in KEDA_DIR.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    # Not in the base: `kubectl apply -k deploy/k8s` needs no KEDA in the cluster.
    (base,) = k8s("Kustomization")
    assert not any("keda" in r for r in base["resources"]) and "components" not in base
    # The ready overlay: the base plus the component.
    overlay = yaml.safe_load((KEDA_OVERLAY / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../k8s"] and overlay["components"] == ["../k8s/keda"]
    assert overlay["namespace"] == base["namespace"]
    # KEDA's HPA owns the worker replica counts: the component drops `replicas`.
    (patch,) = component["patches"]
    assert yaml.safe_load(patch["patch"]) == [{"op": "remove", "path": "/spec/replicas"}]
    pattern = re.compile(patch["target"]["name"])
    targets = {
        d["metadata"]["name"] for d in k8s("Deployment") if pattern.fullmatch(d["metadata"]["name"])
    }
    assert targets == {f"renderfarm-worker-{hw}" for hw in HARDWARE}


def test_one_scaled_object_per_class_each_on_its_own_demand():
    assert len(keda("ScaledObject")) == len(HARDWARE)
    services = {d["metadata"]["name"]: d for d in k8s("Service")}
    auths = keda("TriggerAuthentication")
    for hardware in HARDWARE:
        so = scaled_object(hardware)
        where = f"ScaledObject {so['metadata']['name']}"
        ref = so["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment"), where
        dep = one_k8s("Deployment", ref["name"])
        (container,) = pod_spec(dep)["containers"]
        assert parse_renderfarm(container_argv(container), where).hardware == hardware
        assert so["metadata"]["namespace"] == base_namespace(), where

        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "metrics-api", where
        assert trigger.get("metricType", "AverageValue") == "AverageValue", where
        meta = trigger["metadata"]
        # The dashboard's Service, by the name KEDA (in its own namespace) resolves.
        url = urlsplit(meta["url"])
        host = SERVICE_HOST.fullmatch(url.hostname or "")
        assert url.scheme == "http" and host, f"{where}: {meta['url']} is not a Service URL"
        assert host["namespace"] == base_namespace(), where
        svc = services[host["service"]]
        assert host["service"] == "renderfarm-dashboard", where
        assert (url.port or 80) in {p["port"] for p in svc["spec"]["ports"]}, where
        assert url.path == "/api/v1/fleet/demand" and not url.query, where
        assert meta.get("format", "json") == "json", where
        assert meta["valueLocation"] == f"classes.{hardware}.demand", where
        # One job at a time per worker: one replica per job pending or running.
        assert meta["targetValue"] == "1", where
        assert (meta.get("authModes") or meta.get("authMode")) == "bearer", where
        auth = auths[trigger["authenticationRef"]["name"]]
        params = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        assert set(params) & {"token", "bearerToken"}, f"{where}: no bearer token parameter"


def test_scaled_object_bounds_and_scale_down():
    limit = int(configmap_env()[JOB_TIME_LIMIT])
    for hardware in HARDWARE:
        so = scaled_object(hardware)
        spec, where = so["spec"], f"ScaledObject {so['metadata']['name']}"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], where
        assert 1 <= spec["pollingInterval"] <= 60, where
        fallback = spec["fallback"]
        assert fallback["failureThreshold"] >= 1 and fallback["replicas"] >= max(
            spec["minReplicaCount"], 1
        )
        assert fallback.get("behavior", "static") in {"static", "currentReplicasIfHigher"}, where
        # A scale-down sends SIGTERM to a pod the HPA picks, maybe a busy one: its warm
        # shutdown must be able to finish the longest job.
        dep = one_k8s("Deployment", spec["scaleTargetRef"]["name"])
        assert pod_spec(dep)["terminationGracePeriodSeconds"] > limit, where
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        if hardware in ("gpu", "openvino"):
            # Loaded models are worth keeping: shrink slowly, one pod at a time.
            assert spec["cooldownPeriod"] >= 1800, where
            assert down["stabilizationWindowSeconds"] >= 1800, where
            assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"]), where
            assert all(p["periodSeconds"] >= 300 for p in down["policies"]), where
    # A warm GPU worker by default: from zero a job waits for a node, the image, the model.
    assert scaled_object("gpu")["spec"]["minReplicaCount"] >= 1


def test_keda_token_secret_is_made_as_documented():
    """The TriggerAuthentication's Secret is the one the documented commands create, and
    those commands are real: a service account with an operator role and its token."""
    (auth,) = keda("TriggerAuthentication").values()
    (ref,) = auth["spec"]["secretTargetRef"]
    docs = (KEDA_DIR / "triggerauthentication.yaml").read_text() + SCALING.read_text()
    docs = re.sub(r"^#? *", "", docs, flags=re.M)  # commented lines, as typed
    docs = re.sub(r"\\\n", " ", docs)  # continued lines, as one
    made = re.findall(r"kubectl -n (\S+) create secret generic (\S+)\s+--from-literal=(\w+)=", docs)
    assert made, "no `kubectl create secret generic ... --from-literal=KEY=` documented"
    assert {(ns, name, key) for ns, name, key in made} == {
        (base_namespace(), ref["name"], ref["key"])
    }
    commands = re.findall(r"renderfarm (?:users add|tokens create) [^\n|)\"`]+", docs)
    parsed = [parse_renderfarm(shlex.split(line), "token docs") for line in commands]
    assert any(
        a.command == "users" and a.name == "keda" and a.role in ("operator", "admin")
        for a in parsed
    ), "no `renderfarm users add keda --role operator` documented"
    assert not any(a.command == "users" and a.password_stdin for a in parsed)  # service accounts
    assert any(a.command == "tokens" and a.name == "keda" for a in parsed)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_keda_overlay_builds_with_kustomize():
    out = subprocess.run(
        ["kubectl", "kustomize", str(KEDA_OVERLAY)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in built}
    for hardware in HARDWARE:
        name = f"renderfarm-worker-{hardware}"
        assert "replicas" not in kinds[("Deployment", name)]["spec"], name
        so = kinds[("ScaledObject", name)]
        assert so["metadata"]["namespace"] == kinds[("Deployment", name)]["metadata"]["namespace"]
    assert kinds[("Deployment", "renderfarm-dashboard")]["spec"]["replicas"] >= 1
