"""Integration: the image serves /liveness from a mounted converted anti-spoofing folder.

The image holds no torch, so the folder is converted here first (`convert_to_onnx.py
antispoof`'s code, from ../shared/models/antispoof), then mounted read-only with
ANTISPOOF_FROM naming it, the way the README's Docker section says.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_image import image, run_container  # noqa: F401  (image: the session's built image fixture)

from conftest import ROOT

ANTISPOOF_DIR = ROOT.parent / "shared" / "models" / "antispoof"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ANTISPOOF_DIR / "2.7_80x80_MiniFASNetV2.pth").is_file():
        pytest.skip(f"anti-spoofing checkpoints not found at {ANTISPOOF_DIR}")
    pytest.importorskip("torch", reason="converting the checkpoints needs torch (requirements-dev.txt)")
    from model_tools.antispoof_export import convert

    out = tmp_path_factory.mktemp("antispoof-onnx")
    convert(ANTISPOOF_DIR, out, served=True, progress=False)
    for path in [out, *out.iterdir()]:  # the container's user must read the mounted files
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return out


def test_a_mounted_converted_folder_serves_liveness(image: str, converted: Path) -> None:  # noqa: F811
    with run_container(image, extra_args=["-v", f"{converted}:/weights:ro"], env={"ANTISPOOF_FROM": "/weights"}) as c:
        c.wait_ready()
        with c.client() as client:
            samples = ANTISPOOF_DIR / "samples"
            live = client.post("/liveness", files={"image": ("T1.jpg", (samples / "image_T1.jpg").read_bytes())})
            spoof = client.post("/liveness", files={"image": ("F2.jpg", (samples / "image_F2.jpg").read_bytes())})
            assert live.status_code == 200, live.text
            assert live.json()["is_real"] is True and spoof.json()["is_real"] is False
            assert [m["name"] for m in client.get("/models").json()["models"]][-1] == "antispoof"


def test_without_the_folder_the_image_answers_liveness_with_503(image: str) -> None:  # noqa: F811
    with run_container(image) as c:
        c.wait_ready()
        with c.client() as client:
            samples = ANTISPOOF_DIR / "samples"
            if not samples.is_dir():
                pytest.skip(f"anti-spoofing samples not found at {samples}")
            answer = client.post("/liveness", files={"image": ("T1.jpg", (samples / "image_T1.jpg").read_bytes())})
            assert answer.status_code == 503 and "ANTISPOOF_FROM" in answer.json()["detail"]
