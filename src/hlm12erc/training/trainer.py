"""The training loop over cached features: seeded, AdamW, early stopping on valid weighted-F1.

Features are small (a few thousand floats per row), so a whole split lives in memory as
tensors and batches are index slices; no DataLoader workers are needed. Every evaluation
runs under ``model.eval()`` and ``torch.no_grad()``; the best-valid-F1 weights are restored
at the end. Checkpoints are a ``state_dict`` (``model.pt``) plus ``config.json``; loading uses
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import copy
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from hlm12erc.config import ConfigError, ObjectiveConfig, TrainParams, params_from_dict, resolve_jobs
from hlm12erc.data.meld import check_labels
from hlm12erc.features.store import MODALITIES, FeatureSet
from hlm12erc.models.erc import ERCConfig, ERCModel
from hlm12erc.models.losses import build_criterion
from hlm12erc.training.metrics import compute_metrics

HISTORY_COLUMNS = ("epoch", "train_loss", "valid_loss", "valid_accuracy", "valid_weighted_f1")


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def set_cpu_threads(threads: int) -> None:
    """Intra-op threads for CPU work. The fusion models are tiny: with one thread `multimodal`
    trains on the demo in 9 s, with two (the other core busy) in 85 s, lost to thread syncing."""
    torch.set_num_threads(resolve_jobs(threads))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class Batch:
    features: dict[str, torch.Tensor]  # modality -> (B, d)
    mask: torch.Tensor  # (B, M) bool, objective modality order
    targets: torch.Tensor  # (B,) class ids

    def to(self, device: torch.device) -> "Batch":
        return Batch({m: x.to(device) for m, x in self.features.items()}, self.mask.to(device), self.targets.to(device))

    def __len__(self) -> int:
        return len(self.targets)

    def select(self, rows: torch.Tensor) -> "Batch":
        return Batch({m: x[rows] for m, x in self.features.items()}, self.mask[rows], self.targets[rows])


def label_ids(labels_of_rows: Sequence[str], labels: Sequence[str], index: pd.DataFrame | None = None,
              source: str = "features") -> np.ndarray:
    """Class ids of the rows; a label outside ``labels`` is a DataError naming the row."""
    frame = index if index is not None else pd.DataFrame({"label": list(labels_of_rows)})
    check_labels(frame, labels, source)
    lookup = {label: i for i, label in enumerate(labels)}
    return np.array([lookup[label] for label in labels_of_rows], dtype=np.int64)


def collate(items: Sequence[dict], modalities: Sequence[str], labels: Sequence[str]) -> Batch:
    """Feature items (``FeatureSet[i]``) -> one Batch; mask columns follow ``modalities``."""
    columns = [MODALITIES.index(m) for m in modalities]
    features = {m: torch.as_tensor(np.stack([item[m] for item in items]), dtype=torch.float32) for m in modalities}
    mask = torch.as_tensor(np.stack([np.asarray(item["mask"])[columns] for item in items]), dtype=torch.bool)
    targets = torch.as_tensor(label_ids([item["label"] for item in items], labels))
    return Batch(features, mask, targets)


def as_batch(features: FeatureSet, modalities: Sequence[str], labels: Sequence[str], source: str = "features") -> Batch:
    """A whole FeatureSet as one Batch (tensors on CPU)."""
    columns = [MODALITIES.index(m) for m in modalities]
    return Batch({m: torch.as_tensor(features.arrays[m], dtype=torch.float32) for m in modalities},
                 torch.as_tensor(features.mask[:, columns], dtype=torch.bool),
                 torch.as_tensor(label_ids(features.labels, labels, features.index, source)))


@torch.no_grad()
def predict_logits(model: ERCModel, data: Batch, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits of every row, in order, with dropout off."""
    model.eval()
    outputs = []
    for start in range(0, len(data), batch_size):
        chunk = data.select(torch.arange(start, min(start + batch_size, len(data)))).to(device)
        outputs.append(model(chunk.features, chunk.mask).logits.float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, model.config.n_classes)


def predict_proba(model: ERCModel, features: FeatureSet, batch_size: int, device: torch.device,
                  source: str = "features") -> np.ndarray:
    """Class probabilities of every row of ``features``, once their widths match what the model was trained on."""
    for m in model.config.modalities:
        if features.dims[m] != model.config.input_dims[m]:
            raise ConfigError(f"{source}: {m} features are {features.dims[m]}-d but the model expects "
                              f"{model.config.input_dims[m]}-d: the feature params or encoders differ from the "
                              "ones it was trained with; retrain it (`dvc repro`)")
    data = as_batch(features, model.config.modalities, model.config.labels, source)
    return torch.softmax(predict_logits(model, data, batch_size, device), dim=-1).numpy()


def evaluate_batch(model: ERCModel, data: Batch, batch_size: int, device: torch.device) -> dict:
    """Plain cross-entropy (comparable across objectives), accuracy and weighted F1 on one split."""
    logits = predict_logits(model, data, batch_size, device)
    labels = model.config.labels
    predicted = [labels[i] for i in logits.argmax(1).tolist()]
    actual = [labels[i] for i in data.targets.tolist()]
    metrics = compute_metrics(actual, predicted, labels)
    loss = torch.nn.functional.cross_entropy(logits, data.targets).item()
    return {"loss": loss, "accuracy": metrics["accuracy"], "weighted_f1": metrics["weighted_f1"]}


@dataclass
class TrainResult:
    model: ERCModel
    history: pd.DataFrame  # HISTORY_COLUMNS, one row per epoch
    best_epoch: int
    best_valid_weighted_f1: float


def train_model(objective: ObjectiveConfig, train_set: FeatureSet, valid_set: FeatureSet, labels: Sequence[str],
                train: TrainParams, device: torch.device | None = None,
                on_epoch: Callable[[dict], None] | None = None, progress: bool = True) -> TrainResult:
    """Train one objective on cached features; returns the best-valid-F1 model and the history."""
    seed_everything(train.seed)
    set_cpu_threads(train.threads)
    device = device or select_device(train.device)
    labels = list(labels)
    train_batch = as_batch(train_set, objective.modalities, labels, f"{objective.train_table} features")
    valid_batch = as_batch(valid_set, objective.modalities, labels, "valid features")
    if len(train_batch) == 0 or len(valid_batch) == 0:
        raise ValueError(f"objective {objective.name}: empty train ({len(train_batch)}) or valid "
                         f"({len(valid_batch)}) split; check data/tables")
    model = ERCModel.from_objective(objective, train_set.dims, labels)
    model.set_normalization({m: train_set.arrays[m] for m in objective.modalities},
                            train_batch.mask.numpy())
    model.to(device)
    criterion = build_criterion(objective, train_batch.targets.numpy(), len(labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=objective.lr or train.lr, weight_decay=train.weight_decay)
    generator = torch.Generator().manual_seed(train.seed)
    epochs = objective.epochs or train.epochs
    best_f1, best_epoch, best_state, rows = -1.0, 0, None, []
    bar = tqdm(range(1, epochs + 1), desc=f"train {objective.name}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order, total = torch.randperm(len(train_batch), generator=generator), 0.0
        for start in range(0, len(order), train.batch_size):
            chunk = train_batch.select(order[start:start + train.batch_size]).to(device)
            output = model(chunk.features, chunk.mask)
            loss = criterion(output.logits, output.embedding, chunk.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(chunk)
        valid = evaluate_batch(model, valid_batch, train.eval_batch_size, device)
        row = {"epoch": epoch, "train_loss": total / len(train_batch), "valid_loss": valid["loss"],
               "valid_accuracy": valid["accuracy"], "valid_weighted_f1": valid["weighted_f1"]}
        rows.append(row)
        if on_epoch:
            on_epoch(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", f1=f"{row['valid_weighted_f1']:.3f}")
        if valid["weighted_f1"] > best_f1:
            best_f1, best_epoch, best_state = valid["weighted_f1"], epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= train.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)), best_epoch, best_f1)


def save_model(model: ERCModel, out_dir: str | Path, objective: ObjectiveConfig | None = None,
               extra: dict | None = None) -> Path:
    """``model.pt`` (state_dict) + ``config.json`` (model config, objective, extras)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / "model.pt")
    config = {"model": model.config.to_dict(), "objective": asdict(objective) if objective else None, **(extra or {})}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out_dir


def load_model(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[ERCModel, dict]:
    """The model saved by :func:`save_model` (eval mode) and its config.json."""
    model_dir = Path(model_dir)
    for name in ("model.pt", "config.json"):
        if not (model_dir / name).exists():
            raise FileNotFoundError(f"{model_dir}/{name} not found; run the train stage for this model first")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model = ERCModel(ERCConfig(**config["model"]))
    model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
    if config.get("features"):  # the encoders' settings, for featurizing new rows the same way
        model.feature_params = params_from_dict({"features": config["features"]}).features
    return model.to(device).eval(), config
