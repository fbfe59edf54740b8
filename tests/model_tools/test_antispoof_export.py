"""`convert_to_onnx.py antispoof`: ONNX equal to PyTorch, the manifest, the served graph, the download path.

The round trip converts the real checkpoints (ROOT.parent/shared/models/antispoof; skipped
without) once per module. Downloads are served from a local HTTP server and file:// URLs,
since the upstream repository is out of reach here.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is a dev dependency (requirements-dev.txt)")

import convert_to_onnx  # noqa: E402
from conftest import ROOT  # noqa: E402
from model_tools import antispoof_export as export  # noqa: E402
from model_tools import antispoof_graph as graph  # noqa: E402
from model_tools import minifasnet as mf  # noqa: E402

ANTISPOOF_DIR = ROOT.parent / "shared" / "models" / "antispoof"
SAMPLES_DIR = ANTISPOOF_DIR / "samples"


def need_real_checkpoints() -> None:
    missing = [item.filename for item in mf.UPSTREAM_FILES if not (ANTISPOOF_DIR / item.filename).is_file()]
    if missing or not SAMPLES_DIR.is_dir():
        pytest.skip(f"anti-spoofing checkpoints/samples not found in {ANTISPOOF_DIR}: {missing or 'samples'}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI run once: both real checkpoints and the served graph into a fresh folder."""
    need_real_checkpoints()
    out = tmp_path_factory.mktemp("antispoof") / "onnx"
    argv = ["antispoof", "--from", str(ANTISPOOF_DIR), "--out", str(out), "--served", "--images", str(SAMPLES_DIR)]
    assert convert_to_onnx.main(argv) == 0
    return out


def test_the_cli_writes_each_model_and_a_manifest_with_true_checksums(converted: Path) -> None:
    info = json.loads((converted / export.MANIFEST).read_text())
    assert sorted(p.name for p in converted.iterdir()) == sorted(
        ["2.7_80x80_MiniFASNetV2.onnx", "4_0_0_80x80_MiniFASNetV1SE.onnx", export.SERVED_FILENAME, export.MANIFEST]
    )
    assert info["class_order"] == ["attack_0", "real", "attack_2"] and info["real_class"] == 1
    assert [(m["network"], m["scale"], m["input_size"]) for m in info["models"]] == [
        ("MiniFASNetV2", 2.7, [80, 80]), ("MiniFASNetV1SE", 4.0, [80, 80])
    ]
    for entry in [*info["models"], info["served"]]:
        assert hashlib.sha256((converted / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    for entry in info["models"]:
        assert entry["checkpoint"]["pinned_upstream"] is True
        assert max(entry["max_softmax_difference"].values()) <= 1e-5
    assert max(info["served"]["max_probability_difference"].values()) <= 1e-5
    assert "Apache-2.0" in info["licence"]


def test_exported_models_batch_and_equal_pytorch_on_real_crops(converted: Path) -> None:
    import cv2
    import onnx

    from vision.antispoof import liveness_crops, softmax

    checkpoints = mf.checkpoints_in(ANTISPOOF_DIR)
    reference = mf.TorchReference(checkpoints)
    image = cv2.imread(str(SAMPLES_DIR / "image_T1.jpg"))
    boxes = np.array([[117.7, 109.6, 296.5, 351.3], [0, 0, 100, 120], [300, 400, 480, 640], [50, 50, 60, 62]])
    expected = reference.probabilities(image, boxes)
    crops = liveness_crops(image, boxes, [name.scale for _, name in reference.models])
    for index, checkpoint in enumerate(checkpoints):
        path = converted / f"{checkpoint.stem}.onnx"
        session = graph.session(onnx.load(str(path)))
        assert session.get_inputs()[0].shape[0] == "batch"
        batch = np.ascontiguousarray(crops[index].transpose(0, 3, 1, 2)).astype(np.float32)
        logits = session.run(None, {export.RAW_INPUT: batch})[0]
        np.testing.assert_allclose(softmax(logits), expected[index], atol=1e-5)
        one = session.run(None, {export.RAW_INPUT: batch[1:2]})[0]
        np.testing.assert_allclose(one[0], logits[1], atol=1e-5)  # a batch does not mix its faces
    served = graph.session(onnx.load(str(converted / export.SERVED_FILENAME)))
    np.testing.assert_allclose(graph.served_probabilities(served, crops), expected, atol=1e-5)


def test_failing_the_parity_check_writes_nothing(tmp_path: Path, capsys) -> None:
    need_real_checkpoints()
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ANTISPOOF_DIR / "2.7_80x80_MiniFASNetV2.pth", source)
    out = tmp_path / "out"
    argv = ["antispoof", "--from", str(source), "--out", str(out), "--atol", "0", "--images", str(SAMPLES_DIR)]
    assert convert_to_onnx.main(argv) == 1
    err = capsys.readouterr().err
    assert "differs from PyTorch" in err and "Traceback" not in err
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_bad_sources_are_clear_errors(tmp_path: Path, capsys) -> None:
    assert convert_to_onnx.main(["antispoof", "--from", str(tmp_path / "none"), "--out", str(tmp_path)]) == 1
    assert "not a folder of checkpoints" in capsys.readouterr().err
    (tmp_path / "weights.pth").write_bytes(b"x")
    assert convert_to_onnx.main(["antispoof", "--from", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "is not named" in capsys.readouterr().err


def test_the_arcface_cli_is_unchanged(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        convert_to_onnx.main(["--help"])
    assert exit_info.value.code == 0
    assert "--weights-path" in capsys.readouterr().out


# --------------------------------------------------------------------------- downloads
class FolderHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, counting requests; Range is not honoured (fetch restarts then)."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        FolderHandler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server over an (initially empty) mirror folder: (base URL, folder)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    FolderHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(FolderHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    server.shutdown()


def fake_upstream(monkeypatch: pytest.MonkeyPatch, folder: Path) -> list[bytes]:
    """Small stand-in files in `folder`, pinned by their real checksums."""
    payloads = [np.random.default_rng(i).bytes(200_000 + i) for i in range(len(mf.UPSTREAM_FILES))]
    files = []
    for item, payload in zip(mf.UPSTREAM_FILES, payloads, strict=True):
        (folder / item.filename).write_bytes(payload)
        files.append(mf.UpstreamFile(item.filename, hashlib.sha256(payload).hexdigest(), len(payload)))
    monkeypatch.setattr(export, "UPSTREAM_FILES", tuple(files))
    return payloads


def test_upstream_files_download_into_the_cache_once(mirror, tmp_path: Path, monkeypatch) -> None:
    base_url, folder = mirror
    payloads = fake_upstream(monkeypatch, folder)
    cache = tmp_path / "cache"
    paths = export.obtain_checkpoints(export.UPSTREAM, cache, base_url, progress=False)
    assert [p.read_bytes() for p in paths] == payloads and all(p.parent == cache for p in paths)
    assert len(FolderHandler.requests) == 2
    # Cached and verified: no request even when the mirror is gone.
    assert export.obtain_checkpoints(export.UPSTREAM, cache, "http://127.0.0.1:9/", progress=False) == paths
    assert len(FolderHandler.requests) == 2


def test_a_download_with_the_wrong_checksum_is_refused(mirror, tmp_path: Path, monkeypatch, capsys) -> None:
    base_url, folder = mirror
    fake_upstream(monkeypatch, folder)
    first = folder / mf.UPSTREAM_FILES[0].filename
    first.write_bytes(first.read_bytes()[:-1] + b"!")  # same size, one byte changed
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["antispoof", "--from", "upstream", "--base-url", base_url, "--cache-dir", str(cache), "--out", str(out)]
    assert convert_to_onnx.main(argv) == 1
    err = capsys.readouterr().err
    assert "expected sha256" in err and "nothing was installed" in err
    assert not [p for p in cache.rglob("*") if p.is_file()]
    assert not out.exists()


def test_the_real_checkpoints_download_from_a_file_url_and_convert(tmp_path: Path) -> None:
    need_real_checkpoints()
    cache = tmp_path / "cache"
    paths = export.obtain_checkpoints(export.UPSTREAM, cache, ANTISPOOF_DIR.as_uri(), progress=False)
    assert [p.name for p in paths] == [item.filename for item in mf.UPSTREAM_FILES]
    assert [mf._sha256(p) for p in paths] == [item.sha256 for item in mf.UPSTREAM_FILES]
    model, name = mf.load_checkpoint(paths[0])
    assert name.network == "MiniFASNetV2"
