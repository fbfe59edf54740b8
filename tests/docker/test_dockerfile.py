"""The image is built from the same files and scripts that `make run` uses (static checks).

The source goes in with `COPY . .`, whatever the tree's layout; `.dockerignore` decides what
stays out. `dockerignored()` applies its patterns as Docker does, so these checks hold without
an engine; tests/docker/ builds the image and checks its contents for real.
"""

from __future__ import annotations

import re

from conftest import ROOT, dockerignored

DOCKERFILE = (ROOT / "Docker" / "Dockerfile").read_text()
DOCKERIGNORE = ROOT / ".dockerignore"
MAKEFILE = (ROOT / "Makefile").read_text()
INSTRUCTIONS = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))


def test_image_installs_the_runtime_requirements_only() -> None:
    assert "pip install -r requirements.txt" in INSTRUCTIONS
    assert "requirements-dev" not in INSTRUCTIONS and "torch" not in INSTRUCTIONS
    assert not dockerignored("requirements.txt")


def test_requirements_are_installed_before_the_source_is_copied() -> None:
    # A source change must not re-run pip: requirements first, their own layer, then the tree.
    copy_requirements = INSTRUCTIONS.index("COPY requirements.txt")
    pip_install = INSTRUCTIONS.index("pip install -r requirements.txt")
    copy_source = INSTRUCTIONS.index("COPY . .")
    assert copy_requirements < pip_install < copy_source


def test_image_prepares_the_repository_and_starts_like_make_run() -> None:
    assert "python extract_insightface_models.py --output-dir model_repository" in DOCKERFILE
    assert "extract_insightface_models.py --output-dir" in MAKEFILE
    assert re.search(r'CMD \["Docker/start.sh"\]', DOCKERFILE)
    assert "Docker/start.sh" in MAKEFILE


def test_image_copies_the_whole_source_and_exposes_the_ports() -> None:
    assert re.search(r"^COPY \. \.$", INSTRUCTIONS, flags=re.M)
    assert "COPY *.py" not in INSTRUCTIONS, "a file list breaks when modules move into packages"
    modules = [p.relative_to(ROOT).as_posix() for p in ROOT.glob("*.py")]
    packages = [p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("*/__init__.py")]
    for path in [*modules, *(f"{p}/__init__.py" for p in packages), "Docker/start.sh"]:
        assert not dockerignored(path), f"{path} is kept out of the image"
    assert re.search(r"EXPOSE 8000 8001 8002 3000", DOCKERFILE)


def test_image_carries_the_demo_page() -> None:
    # app.py serves /ui from ui/ next to it; an image without the folder has no demo page.
    assert (ROOT / "ui" / "index.html").is_file()
    assert not dockerignored("ui") and not dockerignored("ui/index.html")


def test_dockerignore_keeps_out_what_the_service_does_not_run() -> None:
    for path in [
        ".git",
        ".venv/bin/python",
        "tests/test_api.py",
        "tests/docker/test_image.py",
        "benchmarks/accuracy.py",
        "docs/ui.png",
        "deploy/nginx.conf",
        ".ci/run",
        "data/gallery.db",
        "model_repository/fr_model/1/model.onnx",
        "model_repository/model_info.json",
        "__pycache__/app.cpython-311.pyc",
        "gallery/__pycache__/store.cpython-311.pyc",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        ".triton_backends/python/libtriton_python.so",
        ".env",
    ]:
        assert dockerignored(path), f"{path} would be copied into the image"
    # The repository's README is the one prepared folder content the image takes from the tree.
    assert not dockerignored("model_repository/README.md")


def test_healthcheck_probes_the_api_port_start_sh_uses() -> None:
    [check] = re.findall(r"^HEALTHCHECK .*\n\s*CMD (.*)$", INSTRUCTIONS, flags=re.M)
    assert "/ready" in check
    assert "${FASTAPI_PORT:-3000}" in check, "a container started with FASTAPI_PORT would never turn healthy"
