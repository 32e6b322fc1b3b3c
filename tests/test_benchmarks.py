"""The benchmark scripts: pipeline_throughput.py --quick end to end on tiny generated inputs (no DVC outputs
needed), and the parts of the MELD benchmarks that run without MELD."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ERC_LABELS, erc_random_features

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "pipeline_throughput.py"


def tiny_model(out_dir: Path) -> Path:
    """A 1-epoch fusion model on random features shaped like the real encoders' output (no featurize)."""
    from hlm12erc.config import PARAMS_FILE, load_params
    from hlm12erc.features.audio import build_audio_encoder
    from hlm12erc.features.visual import build_face_encoder, build_frame_encoder
    from hlm12erc.training.fit import fit, new_model

    params = load_params(PARAMS_FILE)
    visual = params.features.visual
    dims = {"text": 768, "audio": build_audio_encoder(params.features.audio).dim,
            "visual": build_frame_encoder(visual).dim + build_face_encoder(visual).dim}
    objective = dataclasses.replace(params.objective("multimodal"), epochs=1)
    params = dataclasses.replace(params, labels=list(ERC_LABELS),
                                 train=dataclasses.replace(params.train, device="cpu", patience=1))
    train_set, valid_set = erc_random_features(28, 0, dims, ERC_LABELS), erc_random_features(14, 1, dims, ERC_LABELS)

    def table(features):  # the 1NF columns the model reads besides the features
        frame = features.index.copy()
        frame["split"], frame["speaker"], frame["x_text"] = "train", "Ross", "hi"
        return frame

    model = new_model(objective, params, dims)
    fit(model, table(train_set), table(valid_set), train_set, valid_set, params, progress=False)
    return model.save(out_dir)


def tiny_clips(folder: Path) -> Path:
    from hlm12erc.data import demo

    for i in range(2):
        demo.write_clip(folder / f"dia0_utt{i}.mp4", "joy", "anger", seconds=0.6, seed=i, size=(160, 120), fps=12)
    return folder


def number(cell: str) -> float:
    return float(cell.strip())


def test_pipeline_throughput_quick(erc_tables, tmp_path):
    model = tiny_model(tmp_path / "model")
    clips = tiny_clips(tmp_path / "clips")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--tables", str(erc_tables),
                           "--media", str(erc_tables.parent / "media"), "--clips", str(clips), "--model", str(model),
                           "--utterances", "12", "--warmup", "2", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip().strip("|").split("|")] for line in proc.stdout.splitlines()
             if line.startswith("| ") and not re.match(r"\|\s*(modality|conversation)\s*\|", line))}
    for name in ("text (MiniLM + context)", "audio (params encoder)", "visual (params encoders)"):
        utterances, rate, ms, load, rss = rows[name]
        assert int(utterances) == 12
        assert number(rate) > 0 and number(ms) > 0 and number(load) >= 0 and number(rss) > 0
    for name in ("text only", "with clips"):
        turns, cold, cold_rss, *cells = rows[name]
        assert int(turns) == 10
        assert all(number(c) > 0 for c in cells), (name, cells)
        if name == "with clips" or cold != "-":  # --quick starts the CLI cold for the clips only
            assert number(cold) > 0 and number(cold_rss) > 0
    results = json.loads((out / "results.json").read_text())
    used = {r["setting"]: r["used"] for r in results["predict"]}
    assert used == {"text": ["text"], "clips": ["text+audio+visual"]}
    for name in ("table.md", "featurize.csv", "predict.csv"):
        assert (out / name).stat().st_size > 0


def test_pipeline_throughput_missing_inputs(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tables", str(tmp_path / "none")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode != 0
    assert "make demo" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def benchmark(name: str):
    """A script of benchmarks/ as a module (they import each other by name)."""
    import importlib.util

    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_meld_benchmark_table_gives_dialogue_bootstrap_intervals_paired_on_text_finetune():
    import numpy as np
    import pandas as pd

    meld_erc = benchmark("meld_erc")
    rng = np.random.default_rng(0)
    dev = pd.DataFrame({"dialogue": np.repeat(np.arange(40), 6), "label": rng.choice(ERC_LABELS, 240)})
    truth = np.eye(len(ERC_LABELS))[[ERC_LABELS.index(v) for v in dev["label"]]]

    def noisy(keep: float, seed: int) -> np.ndarray:
        probs = np.random.default_rng(seed).random(truth.shape)
        return np.where(np.random.default_rng(seed + 1).random(len(dev))[:, None] < keep, truth, probs)

    rows = []
    for seed in (1, 2):
        base = noisy(0.5, seed)
        rows += [meld_erc.row("text_finetune (2 encoder(s))", seed, dev, base, ERC_LABELS, 1.0, 0.5),
                 meld_erc.row("final, same as text_finetune", seed, dev, base, ERC_LABELS, 1.0, 0.5),
                 meld_erc.row("final, perfect", seed, dev, truth, ERC_LABELS, 1.0, 0.5)]
    lines = meld_erc.table_markdown(rows, ERC_LABELS, dev).splitlines()
    assert lines[0].startswith("| model | seeds | weighted-F1 | dev 95% CI | vs text_finetune (95% CI) |")
    cells = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:]}
    low, high = map(float, cells["text_finetune (2 encoder(s))"][3].split("–"))
    mean = np.mean([r["weighted_f1"] for r in rows if r["name"].startswith("text_finetune")])
    assert low < mean < high and high - low > 0.02
    assert cells["text_finetune (2 encoder(s))"][4] == "(reference)"
    assert cells["final, same as text_finetune"][4] == "+0.000 (+0.000, +0.000)"
    gain = cells["final, perfect"][4]
    assert cells["final, perfect"][3] == "1.000–1.000" and gain.startswith(f"+{1 - mean:.3f} (+")
    assert meld_erc.table_markdown(rows, ERC_LABELS).splitlines()[0].count("95% CI") == 0  # no dev: no intervals


def test_meld_benchmark_refuses_encoders_cached_with_other_params(tmp_path):
    """A cached seed folder is reused only for the text_encoder params it was trained with."""
    from hlm12erc.config import load_params

    meld_erc = benchmark("meld_erc")
    params = load_params(REPO / "params.yaml")
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "config.json").write_text("{}")
    saved = {k: v for k, v in dataclasses.asdict(params.text_encoder).items() if k != "eval_batch_size"}
    saved.update(epochs=params.text_encoder.epochs + 1, max_tokens=params.text_encoder.max_tokens + 1)
    (tmp_path / "text_encoder.json").write_text(json.dumps({"train_minutes": 1.0, "text_encoder": saved}))
    with pytest.raises(SystemExit, match=r"other text_encoder params \(epochs, max_tokens\); pass another --out"):
        meld_erc.encoders_for(42, params, None, None, tmp_path)


def test_neighbour_turns_are_the_speakers_last_the_other_speakers_just_before_and_the_next():
    import numpy as np
    import pandas as pd

    probe = benchmark("meld_dialogue_signal")
    # dialogue a in order A B A A, dialogue b: C; rows shuffled
    table = pd.DataFrame({"dialogue": ["a", "b", "a", "a", "a"], "sequence": [2, 0, 0, 3, 1],
                          "speaker": ["A", "C", "A", "A", "B"], "label": ["joy"] * 5})
    probs = np.full((5, 2), 0.5)
    probs[:, 0] = [0.1, 0.2, 0.3, 0.4, 0.6]
    x = probe.neighbour_turns(table, probs)
    assert x.shape == (5, 2 * 4 + 3)
    same, other, following, flags = np.exp(x[:, 2:4]), np.exp(x[:, 4:6]), np.exp(x[:, 6:8]), x[:, 8:]
    # row 0 (a, turn 2, A): A's last turn is row 2 (turn 0); the turn just before is B's (row 4)
    assert same[0, 0] == pytest.approx(0.3) and other[0, 0] == pytest.approx(0.6) and flags[0].tolist() == [1, 1, 1]
    assert following[0, 0] == pytest.approx(0.4)  # turn 3 is row 3
    # row 3 (a, turn 3, A): A's last turn is row 0; the turn just before is A's own, so no other-speaker turn
    assert same[3, 0] == pytest.approx(0.1) and flags[3].tolist() == [1, 0, 0]
    assert flags[2].tolist() == [0, 0, 1] and following[2, 0] == pytest.approx(0.6)  # first turn of a
    assert flags[1].tolist() == [0, 0, 0]  # b has one turn
    assert flags[4].tolist() == [0, 1, 1] and other[4, 0] == pytest.approx(0.3)


def test_dialogue_signal_finds_emotions_that_carry_over_from_the_previous_turn():
    import numpy as np
    import pandas as pd

    probe = benchmark("meld_dialogue_signal")
    rng = np.random.default_rng(0)
    labels = ERC_LABELS
    rows = []
    for d in range(120):  # each turn mostly repeats the previous turn's emotion; the readings see it only faintly
        label = rng.integers(7)
        for t in range(8):
            label = label if rng.random() < 0.8 else rng.integers(7)
            rows.append({"dialogue": d, "sequence": t, "speaker": "AB"[t % 2], "label": labels[label]})
    table = pd.DataFrame(rows)
    y = np.array([labels.index(v) for v in table["label"]])
    logits = rng.normal(size=(len(table), 7)) + 1.0 * np.eye(7)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = probe.signal(table, probs, labels)
    assert list(scores) == ["the ensemble as it is", "regression: this turn", "regression: + previous turns",
                            "regression: + previous and next turns"]
    assert scores["regression: + previous turns"][0] < scores["regression: this turn"][0] - 0.05
    assert scores["regression: + previous turns"][1] > scores["regression: this turn"][1]
    assert scores["regression: + previous and next turns"][0] < scores["regression: + previous turns"][0]
