"""The Compose file, the nginx config and the Kubernetes manifests agree with each other and with the code.

The files are parsed and cross-checked (service names, ports, probes, the Settings fields every
environment variable must name, the scripts commands run) without an engine or a cluster;
tests/docker/ builds and runs the image and has Compose itself validate docker-compose.yml.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import ROOT, dockerignored
from settings import Settings

COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
K8S_DIR = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Docker" / "Dockerfile"

SCALE_OUT = "scale-out"
SCALE_OUT_SERVICES = {"triton", "api", "postgres", "proxy"}
API_PORT = 3000
TRITON_PORTS = {8000, 8001, 8002}
SETTINGS_VARS = {name.upper() for name in Settings.model_fields}
# Variables a container reads that are not Settings: the PostgreSQL image's own.
POSTGRES_IMAGE_VARS = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA"}


ANTISPOOF_SOURCE = "./antispoof-onnx"  # where the compose file expects the converted folder
ANTISPOOF_VOLUME = "antispoof-weights"


def uncommented(text: str) -> str:
    """`text` with its commented-out anti-spoofing YAML blocks uncommented (the optional lines an operator enables).

    A block is a comment line holding a YAML entry (`key:` or `- item`) followed by comment lines at
    the same indentation whose text is indented further; it is uncommented when it mentions antispoof.
    """
    lines, out, index = text.splitlines(), [], 0
    while index < len(lines):
        match = re.match(r"^(\s*)# (.*)$", lines[index])
        if not match or not re.match(r"^(- )?[\w.-]+:( |$)|^- \S+$", match.group(2)):
            out.append(lines[index])
            index += 1
            continue
        indent, block = match.group(1), [match.group(2)]
        index += 1
        while index < len(lines) and (more := re.match(rf"^{indent}# ( .*)$", lines[index])):
            block.append(more.group(1))
            index += 1
        enable = any("antispoof" in line.lower() for line in block)
        out += [indent + line for line in block] if enable else [f"{indent}# {line}" for line in block]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def enabled_services() -> dict[str, dict]:
    """The compose services with the optional anti-spoofing lines uncommented."""
    return yaml.safe_load(uncommented(COMPOSE.read_text()))["services"]


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def manifests(kustomization: dict) -> list[dict]:
    documents = []
    for name in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d]
    return documents


def find(manifests: list[dict], kind: str, name: str) -> dict:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r}, found {len(matches)}"
    return matches[0]


def container(workload: dict, name: str) -> dict:
    [found] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def env_map(service: dict) -> dict[str, str | None]:
    env = service.get("environment", {})
    if isinstance(env, list):  # ["NAME=value", "NAME"]
        return {item.partition("=")[0]: item.partition("=")[2] or None for item in env}
    return env


def published_container_ports(service: dict) -> set[int]:
    """Container side of "host:container" / "ip:host:container" entries (ranges expanded)."""
    ports = set()
    for entry in service.get("ports", []):
        target = str(entry).rsplit(":", 1)[-1]
        low, _, high = target.partition("-")
        ports |= set(range(int(low), int(high or low) + 1))
    return ports


def referenced_repo_files(command: list[str]) -> list[str]:
    return [token for token in command if token.endswith((".py", ".sh"))]


def dockerfile_cmd() -> list[str]:
    [cmd] = re.findall(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), flags=re.M)
    return yaml.safe_load(cmd)


def nginx_upstreams(text: str) -> dict[str, list[str]]:
    """upstream name -> the addresses of its `server` lines."""
    text = re.sub(r"#.*", "", text)
    blocks = re.findall(r"upstream\s+(\S+)\s*\{(.*?)\}", text, flags=re.S)
    return {name: re.findall(r"^\s*server\s+(\S+)", body, flags=re.M) for name, body in blocks}


# --------------------------------------------------------------------------- compose
def test_compose_default_service_is_the_all_in_one_image_with_a_gallery_volume(services: dict, compose: dict) -> None:
    service = services["frtriton"]
    assert "profiles" not in service, "the all-in-one service must start with a plain `docker compose up`"
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert "command" not in service, "the all-in-one runs the image's CMD (Docker/start.sh: Triton + API)"
    assert "TRITON_URL" not in env_map(service), "TRITON_URL would make start.sh skip its own Triton"
    assert API_PORT in published_container_ports(service)
    gallery_dir = str(Path(env_map(service)["GALLERY_DB"]).parent)
    mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"])  # container path -> source
    assert gallery_dir in mounts and mounts[gallery_dir] in compose["volumes"], "the gallery must outlive the container"


def test_compose_scale_out_profile_has_triton_api_postgres_and_proxy(services: dict) -> None:
    in_profile = {name for name, s in services.items() if SCALE_OUT in s.get("profiles", [])}
    assert in_profile == SCALE_OUT_SERVICES


def test_compose_scale_out_api_reaches_triton_and_postgres_by_service_name(services: dict) -> None:
    api = services["api"]
    env = env_map(api)
    host, _, port = env["TRITON_URL"].partition(":")
    assert host == "triton" and port in services["triton"]["expose"]
    gallery = urlsplit(env["GALLERY_URL"])
    postgres_env = env_map(services["postgres"])
    assert gallery.scheme == "postgresql" and gallery.hostname == "postgres" and gallery.port == 5432
    assert gallery.username == postgres_env["POSTGRES_USER"]
    assert gallery.password == postgres_env["POSTGRES_PASSWORD"]
    assert gallery.path.lstrip("/") == postgres_env["POSTGRES_DB"]
    assert {k: v["condition"] for k, v in api["depends_on"].items()} == {
        "triton": "service_healthy", "postgres": "service_healthy"
    }


def test_compose_scale_out_runs_several_api_replicas_without_host_ports(services: dict) -> None:
    api = services["api"]
    assert api["deploy"]["replicas"] > 1
    assert "ports" not in api, "fixed host ports clash between replicas; the proxy publishes the API"
    assert str(API_PORT) in api["expose"]


def test_compose_triton_service_runs_triton_only_and_checks_triton_readiness(services: dict) -> None:
    triton = services["triton"]
    assert triton["command"][1:3] == ["triton_service.py", "serve"]
    assert {int(p) for p in triton["expose"]} == TRITON_PORTS
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"]), "the image's check probes the API's port"
    assert triton["shm_size"] and services["frtriton"]["shm_size"], "the Python backend needs more than 64 MB of shm"


def test_compose_api_healthchecks_probe_ready(services: dict) -> None:
    for name in ("frtriton", "api"):
        assert f"127.0.0.1:{API_PORT}/ready" in " ".join(services[name]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_compose_app_environment_names_are_settings_fields(services: dict) -> None:
    for name in ("frtriton", "triton", "api"):
        unknown = set(env_map(services[name])) - SETTINGS_VARS
        assert not unknown, f"{name}: {unknown} are not Settings fields (a typo is silently ignored)"
    assert "API_KEY" in env_map(services["api"]) and "API_KEY" in env_map(services["frtriton"])


def test_compose_key_file_is_on_a_volume_and_one_volume_serves_every_replica(
    services: dict, compose: dict
) -> None:
    """Without API_KEY the key is generated into `api_key` beside GALLERY_DB (Settings' default
    /app/data in the image): that folder must be a volume, shared by the scale-out replicas."""
    default_db = Settings.model_fields["gallery_db"].default
    image_data_dir = "/app/" + str(default_db.parent.name)  # WORKDIR /app in Docker/Dockerfile
    assert "WORKDIR /app" in DOCKERFILE.read_text()
    for name in ("frtriton", "api"):
        service = services[name]
        env = env_map(service)
        assert "API_KEY" in env and not env["API_KEY"], f"{name}: API_KEY is passed through, never written here"
        assert "API_KEY_OPEN" not in env, f"{name}: the gallery must not be opened by the compose file"
        key_dir = str(Path(env.get("GALLERY_DB") or f"{image_data_dir}/gallery.db").parent)
        mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"])
        assert key_dir in mounts and mounts[key_dir] in compose["volumes"], f"{name}: the key would not persist"
    api = services["api"]
    assert api["deploy"]["replicas"] > 1 and "GALLERY_DB" not in env_map(api)  # one volume, every replica
    assert env_map(api)["TRUST_FORWARDED_FOR"] == "true"  # only the proxy, which appends the client, reaches them
    assert "$proxy_add_x_forwarded_for" in NGINX_CONF.read_text()


def test_compose_proxy_upstream_is_the_api_service(services: dict) -> None:
    proxy = services["proxy"]
    [mount] = proxy["volumes"]
    source, target = mount.split(":")[:2]
    assert (ROOT / source).resolve() == NGINX_CONF and target.startswith("/etc/nginx/")
    text = NGINX_CONF.read_text()
    upstreams = nginx_upstreams(text)
    [proxied] = re.findall(r"proxy_pass\s+http://([^;/\s]+)", text)
    assert upstreams[proxied] == [f"api:{API_PORT}"]
    [listen] = re.findall(r"^\s*listen\s+(\d+)", text, flags=re.M)
    assert published_container_ports(proxy) == {int(listen)}
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"


def test_compose_anti_spoofing_is_off_by_default(services: dict) -> None:
    for name, service in services.items():
        assert "ANTISPOOF_FROM" not in env_map(service), f"{name}: the model must stay optional"
        assert not any("antispoof" in str(v) for v in service.get("volumes", [])), name


def test_compose_anti_spoofing_lines_enabled_install_the_mounted_folder_where_triton_runs(
    enabled_services: dict,
) -> None:
    for name in ("frtriton", "triton"):  # the services that run `triton_service.py serve` (start.sh runs it)
        service = enabled_services[name]
        mounts = {v.split(":")[1]: v.split(":") for v in service["volumes"]}  # container path -> parts
        weights = env_map(service)["ANTISPOOF_FROM"]
        assert weights in mounts, f"{name}: ANTISPOOF_FROM={weights} is not a mounted folder"
        source, _, *mode = mounts[weights]
        assert source == ANTISPOOF_SOURCE and mode == ["ro"], f"{name}: {mounts[weights]}"
        assert set(env_map(service)) <= SETTINGS_VARS
    assert enabled_services["triton"]["command"][1:3] == ["triton_service.py", "serve"]
    assert "ANTISPOOF_FROM" not in env_map(enabled_services["api"]), "the API finds the model in Triton"
    assert not any("antispoof" in v for v in enabled_services["api"].get("volumes", [])), "no weights on the API"
    # everything else is as before: the same services, the same all-in-one volume
    assert set(enabled_services) == set(yaml.safe_load(COMPOSE.read_text())["services"])


def test_proxy_accepts_request_bodies_as_large_as_the_api_does() -> None:
    [size] = re.findall(r"client_max_body_size\s+(\d+)m;", NGINX_CONF.read_text())
    assert int(size) * 1024 * 1024 >= Settings.model_fields["max_request_bytes"].default


# --------------------------------------------------------------------------- kubernetes
def test_kustomization_lists_every_manifest(kustomization: dict) -> None:
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_k8s_api_probes_ready_for_traffic_and_health_for_liveness(manifests: list[dict]) -> None:
    api = container(find(manifests, "Deployment", "api"), "api")
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in (api["readinessProbe"], api["livenessProbe"]):
        port = probe["httpGet"]["port"]
        assert ports.get(port, port) == API_PORT


def test_k8s_triton_probes_triton_health_on_its_http_port(manifests: list[dict]) -> None:
    triton = container(find(manifests, "Deployment", "triton"), "triton")
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert set(ports.values()) == TRITON_PORTS
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ports.get(triton[probe]["httpGet"]["port"]) == 8000
    assert triton["command"][1:3] == ["triton_service.py", "serve"]
    mounts = {m["mountPath"] for m in triton["volumeMounts"]}
    assert "/dev/shm" in mounts, "the Python backend needs more than a pod's 64 MB of shm"


def test_k8s_anti_spoofing_is_off_by_default(manifests: list[dict]) -> None:
    triton = find(manifests, "Deployment", "triton")["spec"]["template"]["spec"]
    assert ANTISPOOF_VOLUME not in {v["name"] for v in triton["volumes"]}, "no claim is needed unless enabled"
    assert "ANTISPOOF_FROM" not in {e["name"] for e in container_env(triton, "triton")}


def container_env(pod: dict, name: str) -> list[dict]:
    [found] = [c for c in pod["containers"] if c["name"] == name]
    return found.get("env", [])


def test_k8s_anti_spoofing_lines_enabled_install_the_mounted_claim_in_the_triton_pod() -> None:
    [deployment, service] = [d for d in yaml.safe_load_all(uncommented((K8S_DIR / "triton.yaml").read_text())) if d]
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]["spec"]
    triton = container(deployment, "triton")
    assert triton["command"][1:3] == ["triton_service.py", "serve"], "serve installs ANTISPOOF_FROM"
    env = {e["name"]: e["value"] for e in container_env(pod, "triton")}
    assert set(env) <= SETTINGS_VARS
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert env["ANTISPOOF_FROM"] in mounts, "ANTISPOOF_FROM must name the mounted folder"
    mount = mounts[env["ANTISPOOF_FROM"]]
    assert mount["name"] == ANTISPOOF_VOLUME and mount["readOnly"] is True
    assert "/dev/shm" in mounts
    [volume] = [v for v in pod["volumes"] if v["name"] == ANTISPOOF_VOLUME]
    assert volume["persistentVolumeClaim"] == {"claimName": ANTISPOOF_VOLUME, "readOnly": True}


def test_k8s_configmap_carries_the_liveness_settings_at_their_defaults(manifests: list[dict]) -> None:
    data = find(manifests, "ConfigMap", "fr-triton-config")["data"]
    assert float(data["LIVENESS_THRESHOLD"]) == Settings.model_fields["liveness_threshold"].default
    assert data["ENROLL_REQUIRE_LIVE"] == "false"
    assert "ANTISPOOF_FROM" not in data, "the API does not install models; Triton's pod does"


def test_k8s_containers_declare_cpu_requests_and_limits(manifests: list[dict]) -> None:
    workloads = [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")]
    assert {w["metadata"]["name"] for w in workloads} == {"api", "triton", "postgres"}
    for workload in workloads:
        for spec in workload["spec"]["template"]["spec"]["containers"]:
            resources = spec["resources"]
            assert resources["requests"]["cpu"] and resources["limits"]["cpu"], workload["metadata"]["name"]


def test_k8s_services_target_ports_their_pods_expose(manifests: list[dict]) -> None:
    workloads = [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")]
    services = [m for m in manifests if m["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"api", "triton", "postgres"}
    for service in services:
        selector = service["spec"]["selector"]
        pods = [w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, f"Service {service['metadata']['name']} selects {len(pods)} workloads"
        assert selector.items() <= pods[0]["spec"]["selector"]["matchLabels"].items()
        exposed = {}
        for spec in pods[0]["spec"]["template"]["spec"]["containers"]:
            exposed |= {p["containerPort"]: p["containerPort"] for p in spec["ports"]}
            exposed |= {p["name"]: p["containerPort"] for p in spec["ports"] if "name" in p}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in exposed, f"{service['metadata']['name']}: {port['targetPort']}"
    assert find(manifests, "StatefulSet", "postgres")["spec"]["serviceName"] == "postgres"


def test_k8s_hpas_scale_the_api_and_triton_deployments_on_cpu(manifests: list[dict]) -> None:
    hpas = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "HorizontalPodAutoscaler"}
    assert set(hpas) == {"api", "triton"}
    for hpa in hpas.values():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["apiVersion"] == "apps/v1"
        find(manifests, "Deployment", target["name"])
        assert {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"} == {"cpu"}
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpas["api"]["spec"]["scaleTargetRef"]["name"] == "api"
    assert hpas["api"]["spec"]["minReplicas"] > 1, "one API replica is a single point of failure"


def api_env_sources(manifests: list[dict]) -> list[dict]:
    """The ConfigMaps and Secrets the API container reads its environment from (envFrom, and
    single keys through secretKeyRef: then only those keys, named as the variables they set)."""
    api = container(find(manifests, "Deployment", "api"), "api")
    sources = []
    for entry in api.get("envFrom", []):
        kind, ref = ("ConfigMap", entry["configMapRef"]) if "configMapRef" in entry else ("Secret", entry["secretRef"])
        sources.append(find(manifests, kind, ref["name"]))
    for variable in api.get("env", []):
        if ref := variable.get("valueFrom", {}).get("secretKeyRef"):
            secret = find(manifests, "Secret", ref["name"])
            value = secret.get("stringData", {})[ref["key"]]
            sources.append({"kind": "Secret", "metadata": secret["metadata"], "stringData": {variable["name"]: value}})
    return sources


def test_k8s_api_env_comes_from_a_configmap_and_a_secret_that_exist(manifests: list[dict]) -> None:
    kinds = {source["kind"] for source in api_env_sources(manifests)}
    assert kinds == {"ConfigMap", "Secret"}


def test_k8s_configmap_and_secret_keys_are_valid_settings(
    manifests: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    values: dict[str, str] = {}
    for source in api_env_sources(manifests):
        values |= source.get("data", {}) | source.get("stringData", {})
    unknown = set(values) - SETTINGS_VARS
    assert not unknown, f"{unknown} are not Settings fields (a typo is silently ignored)"
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # every value parses as its field's type and range
    assert settings.api_key and settings.gallery_url and settings.triton_url
    assert {"API_KEY", "GALLERY_URL"} <= set(find(manifests, "Secret", "fr-triton-secrets")["stringData"])


def test_k8s_api_key_comes_from_a_secret_by_secret_key_ref_for_every_replica(manifests: list[dict]) -> None:
    api = container(find(manifests, "Deployment", "api"), "api")
    [variable] = [v for v in api.get("env", []) if v["name"] == "API_KEY"]
    ref = variable["valueFrom"]["secretKeyRef"]
    assert ref.get("optional", False) is False, "a missing key must stop the pod, not leave API_KEY unset"
    secret = find(manifests, "Secret", ref["name"])
    assert secret["type"] == "Opaque" and secret["stringData"][ref["key"]]
    # Not in a ConfigMap, and the gallery is not opened on purpose.
    for source in api_env_sources(manifests):
        if source["kind"] == "ConfigMap":
            assert "API_KEY" not in source["data"]
            assert source["data"].get("API_KEY_OPEN", "false") == "false"
    # Every replica gets the same key: the Deployment's replicas and the HPA's share one pod template.
    assert find(manifests, "Deployment", "api")["spec"]["replicas"] > 1


def test_k8s_api_settings_name_the_triton_and_postgres_services(manifests: list[dict]) -> None:
    values: dict[str, str] = {}
    for source in api_env_sources(manifests):
        values |= source.get("data", {}) | source.get("stringData", {})
    host, _, port = values["TRITON_URL"].partition(":")
    triton = find(manifests, "Service", host)
    assert int(port) in {p["port"] for p in triton["spec"]["ports"]}
    gallery = urlsplit(values["GALLERY_URL"])
    postgres = find(manifests, "Service", gallery.hostname)
    assert gallery.scheme == "postgresql" and gallery.port in {p["port"] for p in postgres["spec"]["ports"]}
    credentials = find(manifests, "Secret", "postgres-credentials")["stringData"]
    assert (gallery.username, gallery.password, gallery.path.lstrip("/")) == (
        credentials["POSTGRES_USER"], credentials["POSTGRES_PASSWORD"], credentials["POSTGRES_DB"]
    )
    statefulset = container(find(manifests, "StatefulSet", "postgres"), "postgres")
    assert {e["secretRef"]["name"] for e in statefulset["envFrom"]} == {"postgres-credentials"}
    assert set(credentials) | {e["name"] for e in statefulset.get("env", [])} <= POSTGRES_IMAGE_VARS


def test_k8s_postgres_keeps_its_data_on_a_persistent_claim(manifests: list[dict]) -> None:
    statefulset = find(manifests, "StatefulSet", "postgres")
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    postgres = container(statefulset, "postgres")
    assert postgres["image"].startswith("pgvector/pgvector:")
    assert {"name": claim["metadata"]["name"], "mountPath": "/var/lib/postgresql/data"} in postgres["volumeMounts"]


def test_k8s_app_containers_use_the_image_kustomize_sets(manifests: list[dict], kustomization: dict) -> None:
    image_names = {i["name"] for i in kustomization["images"]}
    for name in ("api", "triton"):
        assert container(find(manifests, "Deployment", name), name)["image"] in image_names


# --------------------------------------------------------------------------- commands
def test_commands_run_scripts_that_exist_and_the_image_copies(services: dict, manifests: list[dict]) -> None:
    commands = [dockerfile_cmd()] + [s["command"] for s in services.values() if "command" in s]
    for workload in manifests:
        if workload["kind"] == "Deployment":
            commands += [c["command"] for c in workload["spec"]["template"]["spec"]["containers"] if "command" in c]
    dockerfile = DOCKERFILE.read_text()
    scripts = {script for command in commands for script in referenced_repo_files(command)}
    assert scripts >= {"Docker/start.sh", "triton_service.py"}
    for script in scripts:
        assert (ROOT / script).is_file(), script
        # The image copies the whole context (`COPY . .`) but what .dockerignore keeps out.
        copied = re.search(r"^COPY \. \.$", dockerfile, flags=re.M) and not dockerignored(script)
        assert copied, f"{script} is not copied into the image"
    assert (ROOT / "Docker" / "start.sh").stat().st_mode & 0o111, "CMD runs start.sh directly: it must be executable"


def test_triton_service_cli_has_the_serve_command_the_deployments_run() -> None:
    result = subprocess.run(
        [sys.executable, "triton_service.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    [choices] = re.findall(r"\{([a-z,-]+)\}", result.stdout)[:1]
    assert "serve" in choices.split(",")
