"""Head pose in degrees from the five SCRFD landmarks, by fitting a 3D face model (PnP).

Units and signs (the person faces the camera, image x to the right and y down):

* yaw: turn about the vertical axis; positive when the nose moves towards the image's right
  (the person turns to their own left), 0 frontal, ±90 a profile.
* pitch: nod about the horizontal axis; positive looking down (the nose drops towards the
  mouth), negative looking up.
* roll: tilt in the image plane; positive clockwise on screen (the eye on the image's right
  lower than the other).

Angles are Tait-Bryan angles of the head's rotation R = Rz(roll) @ Ry(-yaw) @ Rx(pitch) in
OpenCV's camera frame (x right, y down, z away from the camera). Zero is the pose of the ArcFace
alignment template, which the model's frontal view reproduces: the "frontal" the recognizer
was trained on.

The model (`FACE_MODEL`, millimetres) is an average face with 63 mm between the eye centres:
its frontal view has the template's proportions (nose tip 36 mm below the eye line, mouth
corners 52 mm apart and 73 mm below it); its depths (nose tip 30 mm in front of the eyes,
mouth corners as deep as the eyes) are measured: over the LFW dev-test photos the full fit
below leaves the least reprojection error with the nose 30-35 mm in front and the mouth at 0
(of 20-40 and 0-20 mm tried), the nose fit with the mouth 5-10 mm behind; the model takes the
eyes' depth, between the two. The camera is unknown: its principal point is put at the
landmarks' centroid and its focal length so that the face is `CAMERA_DISTANCE_MM` away, close
to weak perspective (at 1 m the depth of a face changes its scale by 3 %), which suits
portraits from half a metre to telephoto.

Five points barely determine six degrees of freedom, and two of them, the mouth corners, move
with expression: a broad smile lifts them almost to the nose, which a plain fit of all five
points reads as the head nodding down by 30-43 degrees. Without the mouth's height, pitch
rests on the nose tip's height under the eyes alone, which a long nose or a low-placed nose
landmark reads as the same nod. So two fits are made (Levenberg-Marquardt from a frontal
start, the same minimum `cv2.solvePnP`'s iterative method finds):

* the *nose fit* weights the reprojection error of the mouth corners' height by zero
  (`LANDMARK_WEIGHTS`): eyes, nose tip and the mouth corners' horizontal position;
* the *full fit* weights all five points alike.

Both fit the landmarks after rotating them about their centroid to level the eye line (a roll
of the camera, added back to roll), so the mouth's "height" is the face's own vertical. Yaw
and roll come from the nose fit. Pitch is the one of the two pitches nearer zero, and 0 when
they disagree in sign: a real nod moves the nose and foreshortens the mouth, so both fits see
it; a smile moves only the full fit, an unusual nose mostly the nose fit. The price: looking
down past about 40 degrees, the nose tip climbs back towards the eyes, so the nose fit (and
with it pitch) peaks at about 36 for a head bowed 40 and falls back (20 at 60); looking up is
measured to -60 and beyond. On the LFW dev-test photos (`benchmarks/quality_reject_curve.py`),
frontal portraits with broad smiles that the full fit puts at 30-43 degrees get 4-16, and the
photos with the largest pitch are people plainly looking up or down (README, Enrollment
quality).
"""

from __future__ import annotations

import cv2
import numpy as np

# left eye, right eye (as in the image: the right one has the larger x), nose tip, mouth corners.
# Written from the eyes' midpoint (x right, y down, z away from the camera), then centred on
# the five points' centroid: the point the camera looks at.
_MODEL = np.array([[-31.5, 0.0, 0.0], [31.5, 0.0, 0.0], [0.2, 36.0, -30.0], [-25.7, 72.9, 0.0], [26.5, 72.6, 0.0]])
FACE_MODEL = _MODEL - _MODEL.mean(axis=0)
# The nose fit's weights of the reprojection error, (5, 2) for (x, y) of each landmark: the
# mouth corners' height, which expression moves, not at all.
LANDMARK_WEIGHTS = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
CAMERA_DISTANCE_MM = 1000.0
_ITERATIONS = 50


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) head rotation for angles in degrees (the conventions of this module)."""
    y, p, r = np.deg2rad([-yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a (3, 3) rotation; inverse of `rotation_matrix`."""
    minus_yaw = np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0))
    pitch = np.arctan2(rotation[2, 1], rotation[2, 2])
    roll = np.arctan2(rotation[1, 0], rotation[0, 0])
    return float(-np.rad2deg(minus_yaw)), float(np.rad2deg(pitch)), float(np.rad2deg(roll))


def camera_matrix(landmarks: np.ndarray, model: np.ndarray = FACE_MODEL) -> np.ndarray:
    """(3, 3) pinhole camera for one face: principal point at the centroid of its (5, 2)
    landmarks, focal length putting a face of its size at CAMERA_DISTANCE_MM."""
    points = np.asarray(landmarks, np.float64)
    centre = points.mean(axis=0)
    spread_px = np.sqrt(((points - centre) ** 2).sum(axis=1).mean())
    spread_mm = np.sqrt(((model[:, :2] - model[:, :2].mean(axis=0)) ** 2).sum(axis=1).mean())
    focal = CAMERA_DISTANCE_MM * max(spread_px, 1e-6) / spread_mm
    return np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]])


def project(model: np.ndarray, rotation: np.ndarray, translation: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """Image points (K, 2) of model points (K, 3) seen with rotation (3, 3), translation (3,), camera (3, 3)."""
    rvec, _ = cv2.Rodrigues(np.asarray(rotation, np.float64))
    points, _ = cv2.projectPoints(np.asarray(model, np.float64), rvec, np.asarray(translation, np.float64),
                                  camera, None)
    return points.reshape(-1, 2)


def _initial_guess(points: np.ndarray, model: np.ndarray, camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frontal head with the eye line's roll, placed so the model's centroid lands on the points'."""
    eyes = points[1] - points[0]
    roll = np.rad2deg(np.arctan2(eyes[1], eyes[0]))
    rotation = rotation_matrix(0.0, 0.0, roll)
    centroid = rotation @ model.mean(axis=0)
    translation = np.array([-centroid[0], -centroid[1], CAMERA_DISTANCE_MM - centroid[2]])
    offset = (points.mean(axis=0) - camera[:2, 2]) * CAMERA_DISTANCE_MM / camera[0, 0]
    translation[:2] += offset
    rvec, _ = cv2.Rodrigues(rotation)
    return rvec.ravel(), translation


def fit_pose(
    landmarks: np.ndarray, weights: np.ndarray = LANDMARK_WEIGHTS, model: np.ndarray = FACE_MODEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted PnP by Levenberg-Marquardt from a frontal start (cv2.projectPoints' Jacobian).

    landmarks (5, 2) image pixels; weights (5, 2) per coordinate; model (5, 3) millimetres
    -> (rotation (3, 3), translation (3,) mm, camera (3, 3)).
    """
    points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    camera = camera_matrix(points, model)
    rvec, tvec = _initial_guess(points, model, camera)
    root_w = np.sqrt(np.asarray(weights, np.float64).ravel())
    params = np.r_[rvec, tvec]
    damping = 1e-3

    def residuals(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        projected, jacobian = cv2.projectPoints(model, p[:3], p[3:], camera, None)
        return root_w * (projected.reshape(-1) - points.ravel()), root_w[:, None] * jacobian[:, :6]

    error, jacobian = residuals(params)
    cost = float(error @ error)
    for _ in range(_ITERATIONS):
        normal = jacobian.T @ jacobian
        # cv2.solve, not np.linalg.solve (the same steps to 1e-13 degrees): a 6x6 system through a
        # multi-threaded OpenBLAS cost 15 µs of CPU against 2.5 single-threaded when the cores were busy
        # (a pose 1.1 ms instead of 0.3), and every face of every answer has its pose fitted
        damped = normal + damping * np.diag(np.diag(normal) + 1e-9)
        step = cv2.solve(damped, -jacobian.T @ error, flags=cv2.DECOMP_LU)[1].ravel()
        candidate = params + step
        new_error, new_jacobian = residuals(candidate)
        new_cost = float(new_error @ new_error)
        if new_cost < cost:
            converged = cost - new_cost < 1e-10 * max(cost, 1e-12)
            params, error, jacobian, cost = candidate, new_error, new_jacobian, new_cost
            damping = max(damping / 10, 1e-9)
            if converged:
                break
        else:
            damping *= 10
            if damping > 1e8:
                break
    rotation, _ = cv2.Rodrigues(params[:3])
    return rotation, params[3:], camera


def full_fit(landmarks: np.ndarray, model: np.ndarray = FACE_MODEL) -> np.ndarray:
    """All five points alike: `cv2.solvePnP` (iterative) from the frontal start.

    landmarks (5, 2) image pixels -> rotation (3, 3).
    """
    points = np.asarray(landmarks, np.float64).reshape(-1, 1, 2)
    camera = camera_matrix(points.reshape(-1, 2), model)
    rvec, tvec = _initial_guess(points.reshape(-1, 2), model, camera)
    ok, rvec, _ = cv2.solvePnP(model.reshape(-1, 1, 3), points, camera, None, rvec.reshape(3, 1).copy(),
                               tvec.reshape(3, 1).copy(), useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)[:3]
    if not ok:
        return fit_pose(landmarks, np.ones((len(model), 2)), model)[0]
    return cv2.Rodrigues(rvec)[0]


def _level(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """Rotate (5, 2) landmarks about their centroid so the eye line is level -> (points, its roll in degrees).

    A rotation about the principal point is a roll of the camera, so the pose of the levelled
    points is the pose of the face less that roll; and the mouth corners' "height" that the
    nose fit ignores is then the face's own vertical, not the image's.
    """
    points = np.asarray(landmarks, np.float64).reshape(-1, 2)
    eyes = points[1] - points[0]
    roll = float(np.rad2deg(np.arctan2(eyes[1], eyes[0])))
    angle = np.deg2rad(-roll)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = points.mean(axis=0)
    return (points - centre) @ turn.T + centre, roll


def head_pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a face's five landmarks (5, 2) in image pixels (left
    eye, right eye, nose tip, left and right mouth corners, as SCRFD gives them).

    The eye line is levelled first (its angle is added back to roll). Yaw and roll from the
    nose fit; pitch the nose fit's and the full fit's consensus (the one nearer zero, 0 when
    their signs differ). See the module docstring.
    """
    points, eye_roll = _level(landmarks)
    yaw, nose_pitch, roll = angles(fit_pose(points)[0])
    roll = (roll + eye_roll + 180.0) % 360.0 - 180.0
    full_pitch = angles(full_fit(points))[1]
    if nose_pitch * full_pitch <= 0:
        return yaw, 0.0, roll
    return yaw, float(np.sign(nose_pitch) * min(abs(nose_pitch), abs(full_pitch))), roll
