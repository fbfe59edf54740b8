"""The image is built from the same files and scripts that `make run` uses (no Docker engine here)."""

from __future__ import annotations

import re

from conftest import ROOT

DOCKERFILE = (ROOT / "Docker" / "Dockerfile").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()


def test_image_installs_the_runtime_requirements_only() -> None:
    instructions = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    assert "pip install -r requirements.txt" in instructions
    assert "requirements-dev" not in instructions and "torch" not in instructions


def test_image_prepares_the_repository_and_starts_like_make_run() -> None:
    assert "python extract_insightface_models.py --output-dir model_repository" in DOCKERFILE
    assert "extract_insightface_models.py --output-dir" in MAKEFILE
    assert re.search(r'CMD \["Docker/start.sh"\]', DOCKERFILE)
    assert "Docker/start.sh" in MAKEFILE


def test_image_copies_every_service_module_and_exposes_the_ports() -> None:
    assert "COPY *.py ./" in DOCKERFILE
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))  # quality.py imports vision/
    assert packages and all(f"COPY {name} {name}" in DOCKERFILE for name in packages), packages
    assert re.search(r"EXPOSE 8000 8001 8002 3000", DOCKERFILE)


def test_image_carries_the_demo_page() -> None:
    # app.py serves /ui from ui/ next to it; an image without the folder has no demo page.
    assert "COPY ui ui" in DOCKERFILE
