"""docker-compose.yml as Compose itself reads it (`docker compose config`, or `docker-compose config`).

`config` parses, validates and resolves the file without an engine; tests/test_deploy_manifests.py
cross-checks its contents. Skips, saying why, where neither Compose is installed (Debian's package
`docker-compose`; .ci/run installs it).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {"frtriton", "triton", "api", "postgres", "proxy"}


@functools.cache
def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")


def compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    # No variables from the caller's shell or an .env file: the file's own defaults are checked.
    env = {k: v for k, v in os.environ.items() if k not in {"API_KEY", "POSTGRES_PASSWORD", "FRTRITON_PORT"}}
    return subprocess.run(
        [*compose_command(), "-f", str(file), "--project-directory", str(file.parent), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize("profile", [[], ["--profile", "scale-out"]], ids=["all-in-one", "scale-out"])
def test_compose_validates_the_file(profile: list[str]) -> None:
    result = compose(*profile, "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) >= SERVICES
    for name in ("frtriton", "triton", "api"):
        build = resolved["services"][name]["build"]
        assert Path(build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).is_file()
    assert resolved["services"]["frtriton"]["environment"]["GALLERY_DB"] == "/app/data/gallery.db"
    volumes = resolved["services"]["frtriton"]["volumes"]
    assert [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in volumes] == ["/app/data"]


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    # The check is real: the same file with a misspelt key fails validation.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    healthcheck: *api-ready", "    healthchek: *api-ready", 1))
    result = compose("config", "-q", file=broken)
    assert result.returncode != 0
    assert "healthchek" in result.stderr
