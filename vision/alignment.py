"""Alignment onto the ArcFace template and embedding comparison (after InsightFace's `norm_crop`).

The five landmarks are mapped onto the ArcFace 112x112 template by a least-squares similarity
(Umeyama) and warped; embeddings are L2-normalised and compared by cosine.
"""

from __future__ import annotations

import cv2
import numpy as np

# Where the five landmarks (eyes, nose tip, mouth corners) sit in a 112x112 ArcFace crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
ARCFACE_SIZE = 112


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst.

    Umeyama (1991). src, dst: (K, 2) -> (2, 3) float64 matrix M with dst ~ M @ [x, y, 1].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / src.shape[0]
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1  # a reflection is not a similarity: flip the weakest axis
    rotation = u @ sign @ vt
    variance = (src_c**2).sum() / src.shape[0]
    scale = (singular * np.diag(sign)).sum() / variance if variance > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def align_faces(image: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """Warp each face onto the ArcFace template. image (H, W, 3), landmarks (N, 5, 2) -> (N, size, size, 3)."""
    template = ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)
    crops = np.empty((landmarks.shape[0], size, size, 3), dtype=np.uint8)
    for i, points in enumerate(landmarks):
        matrix = similarity_transform(points, template)
        crops[i] = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    return crops


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """(N, D) -> rows of unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Raw cosine in [-1, 1] of two (D,) vectors."""
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
