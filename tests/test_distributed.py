"""DistributedDataParallel fine-tuning: 2 CPU processes under torchrun (gloo) vs one process.

The tiny BERT has no dropout and the data leave a short last batch of one row, so rank 1 of 2
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
from finetune_support import LABELS, save_tiny_bert  # noqa: E402
from hlm12erc.config import PARAMS_FILE, PROJECT_ROOT  # noqa: E402
from hlm12erc.training import distributed  # noqa: E402
from hlm12erc.training import finetune as ft  # noqa: E402

TESTS = Path(__file__).resolve().parent
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    tokenizer = ft.load_tokenizer(ft.default_model_path())
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
    initial = ft.build_model(ft.FinetuneConfig(), len(LABELS), pretrained=False,
                             encoder_config=json.loads((runs["single"] / "model" / "config.json").read_text())
                             ["encoder_config"]).state_dict()
    moved = 0.0
    for name in single:
        np.testing.assert_allclose(ddp[name].numpy(), single[name].numpy(), rtol=1e-4, atol=2e-5, err_msg=name)
        if name in initial and name.startswith("encoder."):
            moved = max(moved, float((single[name] - initial[name]).abs().max()))
    assert moved > 1e-3  # training did move the encoder, so the agreement above is not vacuous
    one, two = (json.loads((runs[k] / "rank0.json").read_text()) for k in ("single", "ddp"))
    assert two["nproc"] == 2 and one["nproc"] == 1
    assert two["epochs_run"] == one["epochs_run"] == 2 and two["best_epoch"] == one["best_epoch"]
    assert abs(two["best_valid_weighted_f1"] - one["best_valid_weighted_f1"]) < 1e-6
    history = [pd.read_csv(runs[k] / "model" / "history.csv") for k in ("single", "ddp")]
    np.testing.assert_allclose(history[1]["train_loss"], history[0]["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(history[1]["valid_loss"], history[0]["valid_loss"], rtol=1e-4)


def test_only_rank_zero_reports(runs):
    rank0, rank1 = (json.loads((runs["ddp"] / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["on_epoch_calls"] == [1, 2] and rank1["on_epoch_calls"] == []
    assert rank0["rank"] == 0 and rank1["rank"] == 1
    assert rank0["best_valid_weighted_f1"] == rank1["best_valid_weighted_f1"]  # gathered metrics agree


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
    weights = torch.tensor([1.0, 3.0, 0.5])
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 1, 2, 0, 1])
    for kind in ("ce", "weighted_ce", "focal"):
        criterion = ft.ErcLoss(kind, weights, smoothing=0.1 if kind != "focal" else 0.0)
        halves = [(criterion(logits[s], target[s]) * criterion.denominator(target[s])) for s in (slice(0, 2), slice(2, 6))]
        whole = criterion(logits, target) * criterion.denominator(target)
        assert torch.isclose(sum(halves), whole, rtol=1e-5), kind


def test_train_nproc_makes_the_stage_launch_torchrun(tiny_model_dir, erc_tables, tmp_path):
    """`train.nproc: 2` in params.yaml: pipeline/train.py relaunches itself under torchrun."""
    import mlflow

    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["train"].update(nproc=2, device="cpu")
    raw["objectives"]["text_finetune"]["finetune"].update(model_path=tiny_model_dir, epochs=2, max_tokens=32,
                                                          batch_size=8)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model, plots = tmp_path / "models" / "tf", tmp_path / "plots" / "tf"
    result = subprocess.run([sys.executable, "pipeline/train.py", "--params", str(params), "--objective",
                             "text_finetune", "--tables", str(erc_tables), "--features", str(tmp_path / "unused"),
                             "--out", str(model), "--plots", str(plots)],
                            cwd=PROJECT_ROOT, env=ENV | {"HLM12ERC_MLFLOW_URI": uri}, text=True, capture_output=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "launching: torchrun --standalone --nproc_per_node=2" in result.stdout
    assert result.stdout.count("train text_finetune: best valid weighted-F1") == 1  # rank 0 reports
    assert json.loads((model / "config.json").read_text())["nproc"] == 2
    assert pd.read_csv(plots / "history.csv")["epoch"].tolist() == [1, 2]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["hlm12erc"])
    assert runs["tags.mlflow.runName"].tolist() == ["train-text_finetune"]  # one run, from rank 0
    assert runs["params.nproc"].tolist() == ["2"]


def test_bad_nproc_is_one_line_error(tmp_path):
    from hlm12erc.config import ConfigError, params_from_dict

    with pytest.raises(ConfigError, match="train.nproc"):
        params_from_dict({"train": {"nproc": 0}})
