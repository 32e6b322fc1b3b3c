"""DistributedDataParallel fine-tuning: 2 CPU processes under torchrun (gloo) vs one process.

The worker (tests/finetune_support.py) trains one text encoder through the one training loop
(``EncoderTask`` + ``train_loop`` with ``distributed.process_group``). The tiny BERT has no dropout
and the data leave a short last batch of one row, so rank 1 of 2
gets an empty share at the end of each epoch: the zero-weight step and the loss scaling are
both exercised. Two ranks must end with identical weights, and those must match the
one-process run on the same data (same global batches, same seed) up to float rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

torch = pytest.importorskip("torch")
from finetune_support import save_tiny_bert  # noqa: E402
from hlm12erc.config import PARAMS_FILE, PROJECT_ROOT  # noqa: E402
from hlm12erc.models.text_encoder import encoder_path, load_tokenizer  # noqa: E402
from hlm12erc.training import distributed  # noqa: E402

pytestmark = pytest.mark.slow  # minutes: whole stages, subprocesses or servers (`make test-fast` skips them)

TESTS = Path(__file__).resolve().parent
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    tokenizer = load_tokenizer(encoder_path("minilm"))
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tokenizer, dropout=0.0)


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, env=ENV, text=True, capture_output=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """The worker once under torchrun with 2 processes and once alone."""
    worker = str(TESTS / "finetune_support.py")
    ddp, single = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single")
    _run(_torchrun(2, worker, "--model", tiny_model_dir, "--out", str(ddp)), cwd=TESTS)
    _run([sys.executable, worker, "--model", tiny_model_dir, "--out", str(single)], cwd=TESTS)
    return {"ddp": ddp, "single": single}


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_both_ranks_hold_identical_weights(runs):
    rank0, rank1 = _state(runs["ddp"] / "rank0.pt"), _state(runs["ddp"] / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name


def test_two_processes_match_one_process(runs):
    ddp, single = _state(runs["ddp"] / "rank0.pt"), _state(runs["single"] / "rank0.pt")
    initial = _state(runs["single"] / "initial0.pt")
    for name, value in _state(runs["ddp"] / "initial1.pt").items():  # every rank starts from the same weights
        assert torch.equal(value, initial[name]), name
    moved = 0.0
    for name in single:
        np.testing.assert_allclose(ddp[name].numpy(), single[name].numpy(), rtol=1e-4, atol=2e-5, err_msg=name)
        if name.startswith("encoder."):
            moved = max(moved, float((single[name] - initial[name]).abs().max()))
    assert moved > 1e-3  # training did move the encoder, so the agreement above is not vacuous
    one, two = (json.loads((runs[k] / "rank0.json").read_text()) for k in ("single", "ddp"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["epochs_run"] == one["epochs_run"] == 2 and two["best_epoch"] == one["best_epoch"]
    assert abs(two["best_valid_weighted_f1"] - one["best_valid_weighted_f1"]) < 1e-6
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(two["valid_loss"], one["valid_loss"], rtol=1e-4)


def test_only_rank_zero_reports(runs):
    rank0, rank1 = (json.loads((runs["ddp"] / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["on_epoch_calls"] == [1, 2] and rank1["on_epoch_calls"] == []
    assert rank0["rank"] == 0 and rank1["rank"] == 1
    assert rank0["best_valid_weighted_f1"] == rank1["best_valid_weighted_f1"]  # gathered metrics agree
    assert rank0["valid_loss"] == rank1["valid_loss"] and rank0["train_loss"] == rank1["train_loss"]


def test_batch_sampler_splits_each_global_batch_across_ranks():
    batches = [np.array([5, 1, 7, 3, 0]), np.array([2])]
    shares = []
    for rank in range(2):
        sampler = distributed.DistributedBatchSampler(lambda: batches, rank, 2)
        sampler.draw()
        shares.append(list(sampler))
    assert shares[0] == [[5, 7, 0], [2]] and shares[1] == [[1, 3], []]
    assert len(sampler) == 2


def test_loss_denominator_matches_the_mean_the_loss_takes():
    from hlm12erc.models.losses import Criterion, LossConfig

    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 1, 2, 0, 1])
    embedding = torch.zeros(6, 2)
    for kind in ("ce", "weighted_ce", "focal"):
        criterion = Criterion(LossConfig(loss=kind, label_smoothing=0.1 if kind != "focal" else 0.0), [0, 1, 1, 2], 3)
        halves = [(criterion(logits[s], embedding[s], target[s]) * criterion.denominator(target[s]))
                  for s in (slice(0, 2), slice(2, 6))]
        whole = criterion(logits, embedding, target) * criterion.denominator(target)
        assert torch.isclose(sum(halves), whole, rtol=1e-5), kind


def test_train_nproc_makes_the_stage_launch_torchrun(tiny_model_dir, erc_tables, tmp_path):
    """`train.nproc: 2` in params.yaml: stage text_encoder (pipeline/train.py --text-encoders) relaunches itself
    under torchrun."""
    import mlflow

    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["train"].update(nproc=2, device="cpu")
    raw["text_encoder"].update(encoder=tiny_model_dir, epochs=2, min_steps=0, max_tokens=32, batch_size=8,
                               members=2)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model, plots = tmp_path / "models" / "text_encoder", tmp_path / "plots" / "text_encoder"
    result = subprocess.run([sys.executable, "pipeline/train.py", "--params", str(params), "--text-encoders",
                             "--tables", str(erc_tables), "--features", str(tmp_path / "unused"),
                             "--out", str(model), "--plots", str(plots)],
                            cwd=PROJECT_ROOT, env=ENV | {"HLM12ERC_MLFLOW_URI": uri}, text=True, capture_output=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "launching: torchrun --standalone --nproc_per_node=2" in result.stdout
    assert result.stdout.count("train text_encoder: best valid weighted-F1") == 1  # rank 0 reports
    config = json.loads((model / "config.json").read_text())
    assert config["format"] == 4 and config["model"]["members"] == 2
    assert sorted(p.name for p in model.glob("encoder_*.pt")) == ["encoder_0.pt", "encoder_1.pt"]
    history = pd.read_csv(plots / "history.csv")
    assert history["part"].tolist() == ["encoder0", "encoder0", "encoder1", "encoder1"]
    assert history["epoch"].tolist() == [1, 2, 1, 2]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["hlm12erc"])
    assert runs["tags.mlflow.runName"].tolist() == ["train-text_encoder"]  # one run, from rank 0
    assert runs["params.train.nproc"].tolist() == ["2"]


def test_bad_nproc_is_one_line_error(tmp_path):
    from hlm12erc.config import ConfigError, params_from_dict

    with pytest.raises(ConfigError, match="train.nproc"):
        params_from_dict({"train": {"nproc": 0}})
