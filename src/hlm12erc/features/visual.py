"""Visual features: the K frames of a clip -> whole-frame (scene) features + face features.

Whole frame (``encoder``, '+'-joined parts, each averaged over the K frames):
  ``efficientnet_lite0``  EfficientNet-Lite0 ImageNet pooled embedding (1280 floats; default).
  ``stats``        per-channel RGB mean/std, an HSV histogram (8 hue, 4 sat, 4 value bins), a
                   grid x grid map of grayscale means, gradient energy, sharpness (Laplacian
                   variance) and motion (mean absolute difference of consecutive frames).
Faces (``faces: mtcnn | none``): the detector runs on every frame; the largest face of
each frame is encoded by the FER2013 mini-Xception: 7 probabilities + 128-d embedding, averaged
over the frames that have a face, then the share of the K frames with a face (136 floats).
A row where no frame has a face gets ``face_found`` False (face_found.npy): its face part is
zeros *and* its face-share feature is 0, so the model sees "no face" as a value, not as a face.
A row whose frames folder is empty/missing is *absent*: zeros and ``present=False``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from hlm12erc.config import VisualFeatureParams


def read_frames(folder: str | Path) -> list[np.ndarray]:
    """The folder's ``0.png, 1.png, ...`` as RGB uint8 arrays, in numeric order ([] when absent)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.png"), key=lambda p: (len(p.stem), p.stem))
    frames = []
    for file in files:
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is not None:
            frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return frames


class StatsEncoder:
    """Cheap image statistics (see module docstring); ``25 + grid**2`` floats."""

    def __init__(self, grid: int = 4):
        self.grid = grid
        self.dim = 6 + 16 + grid * grid + 3

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        per_frame = [self._frame(f) for f in frames]
        grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0 for f in frames]
        motion = np.mean([np.abs(a - b).mean() for a, b in zip(grays, grays[1:])]) if len(grays) > 1 else 0.0
        return np.concatenate([np.mean(per_frame, axis=0), [motion]]).astype(np.float32)

    def _frame(self, rgb: np.ndarray) -> np.ndarray:
        pixels = rgb.reshape(-1, 3).astype(np.float32) / 255.0
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        hist = [cv2.calcHist([hsv], [c], None, [bins], [0, top]).ravel()
                for c, bins, top in ((0, 8, 180), (1, 4, 256), (2, 4, 256))]
        hist = np.concatenate(hist) / max(1, rgb.shape[0] * rgb.shape[1])
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        cells = cv2.resize(gray, (self.grid, self.grid), interpolation=cv2.INTER_AREA).ravel()
        gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
        gradient = np.sqrt(gx ** 2 + gy ** 2).mean()
        sharpness = cv2.Laplacian(gray, cv2.CV_32F).var()
        return np.concatenate([pixels.mean(0), pixels.std(0), hist, cells, [gradient, sharpness]])


class FaceEncoder:
    """Largest face per frame (MTCNN) -> FER2013 probabilities + embedding + the share of frames with one."""

    def __init__(self, min_face: int = 20):
        from hlm12erc.features.faces import FACE_DIM, FaceDetector, FerEncoder

        self.fer = FerEncoder()
        self.detector = FaceDetector(min_face)
        self.dim = FACE_DIM + 1

    def __call__(self, frames: list[np.ndarray]) -> tuple[np.ndarray, bool]:
        from hlm12erc.features.faces import crop_face

        crops = [crop_face(f, boxes[0]) for f, boxes in zip(frames, self.detector.detect_many(frames)) if boxes]
        if not crops:
            return np.zeros(self.dim, np.float32), False
        encoded = self.fer(crops).mean(0)
        return np.concatenate([encoded, [len(crops) / len(frames)]]).astype(np.float32), True


class SceneFrameEncoder:
    """EfficientNet-Lite0 pooled embedding, averaged over the K frames (one batch per clip)."""

    def __init__(self) -> None:
        from hlm12erc.features.scene import SceneEncoder

        self.encoder = SceneEncoder()
        self.dim = self.encoder.dim

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        return self.encoder.embed(frames).mean(0)


class CombinedFrameEncoder:
    """Several whole-frame encoders side by side (``encoder: efficientnet_lite0+stats``)."""

    def __init__(self, parts: list) -> None:
        self.parts = parts
        self.dim = sum(p.dim for p in parts)

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([p(frames) for p in self.parts]).astype(np.float32)


FRAME_ENCODERS = ("efficientnet_lite0", "stats")


def build_frame_encoder(params: VisualFeatureParams) -> CombinedFrameEncoder:
    """The whole-frame encoder(s) named by ``params.encoder`` ('+'-joined)."""
    names = [n.strip() for n in params.encoder.split("+") if n.strip()]
    unknown = [n for n in names if n not in FRAME_ENCODERS]
    if not names or unknown:
        raise ValueError(f"features.visual.encoder='{params.encoder}' is not known; use one or more of "
                         f"{', '.join(FRAME_ENCODERS)} joined by '+'")
    return CombinedFrameEncoder([StatsEncoder(params.grid) if n == "stats" else SceneFrameEncoder() for n in names])


def build_face_encoder(params: VisualFeatureParams) -> FaceEncoder | None:
    if params.faces == "none":
        return None
    if params.faces != "mtcnn":
        raise ValueError(f"features.visual.faces='{params.faces}' is not known; use mtcnn or none")
    return FaceEncoder(params.min_face)


def visual_features(table: pd.DataFrame, params: VisualFeatureParams, progress: bool = True,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, dim) features, the (N,) present-mask and the (N,) face_found flags."""
    frame_encoder = build_frame_encoder(params)
    face_encoder = build_face_encoder(params)
    dim = frame_encoder.dim + (face_encoder.dim if face_encoder else 0)
    features = np.zeros((len(table), dim), dtype=np.float32)
    present = np.zeros(len(table), dtype=bool)
    face_found = np.zeros(len(table), dtype=bool)
    folders = table["x_visual"].tolist() if "x_visual" in table.columns else [""] * len(table)
    for row, folder in enumerate(tqdm(folders, desc="visual", disable=not progress, leave=False)):
        frames = read_frames(folder) if folder else []
        if not frames:
            continue
        parts = [frame_encoder(frames)]
        if face_encoder is not None:
            face, face_found[row] = face_encoder(frames)
            parts.append(face)
        features[row] = np.concatenate(parts)
        present[row] = True
    return features, present, face_found
