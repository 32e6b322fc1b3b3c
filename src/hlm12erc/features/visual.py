"""Visual features: the K frames of a clip -> whole-frame features + face features.

Whole frame (``encoder``), averaged over the K frames:
  ``stats``        per-channel RGB mean/std, an HSV histogram (8 hue, 4 sat, 4 value bins), a
                   grid x grid map of grayscale means, gradient energy, sharpness (Laplacian
                   variance) and motion (mean absolute difference of consecutive frames).
  ``torchvision``  resnet18 penultimate layer (512 floats) from a *local* weights file
                   (``weights_path``; torchvision's download does not work offline).
Face (``faces: haar``): OpenCV's Haar frontal-face cascade on every frame; the largest face
found becomes a ``face_size`` x ``face_size`` histogram-equalised grayscale crop, or FER2013
CNN class probabilities with ``face_model: fer2013`` (package what-the-face-classification).
When no frame has a face, the central half of the middle frame stands in and ``face_found``
is False for that row (stored as face_found.npy, so the fallback is never silent).
A row whose frames folder is empty/missing is *absent*: zeros and ``present=False``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
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


class ResNetEncoder:
    """torchvision resnet18 without its classifier, from a local weights file; 512 floats."""

    dim = 512

    def __init__(self, weights_path: str, device: str | None = None):
        if not weights_path:
            raise ValueError("features.visual.encoder=torchvision needs features.visual.weights_path: a local "
                             "resnet18 .pth (e.g. resnet18-f37072fd.pth); downloads do not work offline")
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"features.visual.weights_path={weights_path} does not exist")
        import torchvision

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        net = torchvision.models.resnet18(weights=None)
        net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        net.fc = torch.nn.Identity()
        self.net = net.to(self.device).eval()
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        batch = np.stack([cv2.resize(f, (224, 224)) for f in frames]).astype(np.float32) / 255.0
        images = (torch.from_numpy(batch).permute(0, 3, 1, 2) - self.mean) / self.std
        return self.net(images.to(self.device)).mean(0).cpu().numpy().astype(np.float32)


class FaceEncoder:
    """Largest Haar face over the frames -> a small grayscale crop or FER2013 probabilities."""

    def __init__(self, face_size: int = 24, face_model: str = "none"):
        cascade = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(cascade))
        self.face_size = face_size
        self.fer = _load_fer2013() if face_model == "fer2013" else None
        if face_model not in ("none", "fer2013"):
            raise ValueError(f"features.visual.face_model='{face_model}' is not known; use none or fer2013")
        self.dim = 7 if self.fer is not None else face_size * face_size

    def __call__(self, frames: list[np.ndarray]) -> tuple[np.ndarray, bool]:
        best, best_area = None, 0
        for rgb in frames:
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            min_side = max(16, min(gray.shape) // 8)
            for x, y, w, h in self.cascade.detectMultiScale(gray, 1.1, 4, minSize=(min_side, min_side)):
                if w * h > best_area:
                    best, best_area = gray[y:y + h, x:x + w], w * h
        found = best is not None
        if not found:  # fallback: the central half of the middle frame
            gray = cv2.cvtColor(frames[len(frames) // 2], cv2.COLOR_RGB2GRAY)
            h, w = gray.shape
            best = gray[h // 4: h - h // 4, w // 4: w - w // 4]
        return self._describe(best), found

    def _describe(self, crop: np.ndarray) -> np.ndarray:
        if self.fer is not None:
            return self.fer(crop)
        small = cv2.resize(crop, (self.face_size, self.face_size), interpolation=cv2.INTER_AREA)
        return (cv2.equalizeHist(small).astype(np.float32) / 255.0).ravel()


def _load_fer2013():
    """FER2013 CNN of what-the-face-classification (install with --no-deps; check its licence)."""
    try:
        from what_the_face_classification.inference import Image_classifier
    except ImportError as error:
        raise ImportError(
            "features.visual.face_model=fer2013 needs `pip install --no-deps what-the-face-classification` "
            f"(its wheel says MIT but ships a GPL-3.0 LICENSE file: check before use) ({error}); "
            "or set face_model: none") from None
    classifier = Image_classifier()
    net = classifier.net.eval()

    @torch.no_grad()
    def probabilities(crop: np.ndarray) -> np.ndarray:
        face = cv2.resize(crop, (48, 48), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        logits = net(torch.from_numpy(face).view(1, 1, 48, 48))
        return torch.softmax(logits, -1).view(-1).numpy().astype(np.float32)

    return probabilities


def build_frame_encoder(params: VisualFeatureParams) -> StatsEncoder | ResNetEncoder:
    if params.encoder == "stats":
        return StatsEncoder(params.grid)
    if params.encoder == "torchvision":
        return ResNetEncoder(params.weights_path)
    raise ValueError(f"features.visual.encoder='{params.encoder}' is not known; use stats or torchvision")


def visual_features(table: pd.DataFrame, params: VisualFeatureParams, progress: bool = True,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, dim) features, the (N,) present-mask and the (N,) face_found flags."""
    frame_encoder = build_frame_encoder(params)
    if params.faces not in ("haar", "none"):
        raise ValueError(f"features.visual.faces='{params.faces}' is not known; use haar or none")
    face_encoder = FaceEncoder(params.face_size, params.face_model) if params.faces == "haar" else None
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
