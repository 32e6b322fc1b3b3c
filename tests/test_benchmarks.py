"""The benchmark scripts: their shared helpers and pages, pipeline_throughput.py --quick end to end on tiny
generated inputs (no DVC outputs needed), and the parts of the MELD benchmarks that run without MELD."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ERC_LABELS, erc_random_features

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SCRIPT = BENCH / "pipeline_throughput.py"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "common.py")


def benchmark(name: str):
    """A script of benchmarks/ as a module (they import common and each other by name)."""
    import importlib.util

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_page_holds_the_table_command_machine_and_date(tmp_path, monkeypatch):
    import datetime

    monkeypatch.delenv("HLM12ERC_BENCH_PAGES", raising=False)
    common = benchmark("common")
    table = common.markdown_table(["setting", "s/step"], [["minilm fp32", "1.50"]])
    page = common.write_page(str(BENCH / "train_throughput.py"), "Fine-tuning", table, "One note.", folder=tmp_path,
                             argv=[str(BENCH / "train_throughput.py"), "--steps", "3", "--out", str(REPO / "x y")])
    text = page.read_text()
    assert page == tmp_path / "train_throughput.md" and text.startswith("# Fine-tuning\n")
    assert "Written by `benchmarks/train_throughput.py`" in text
    assert "| setting | s/step |\n|---|---:|\n| minilm fp32 | 1.50 |" in text and "One note." in text
    assert "Command: `python benchmarks/train_throughput.py --steps 3 --out 'x y'`" in text
    assert str(REPO) not in text  # no path of this checkout
    machine = re.search(r"Machine: (\d+) cores, (.+), load average ([\d.]+)/([\d.]+)/([\d.]+) .*torch (\S+), "
                        r"bf16 matmul units: (yes|no)", text)
    assert machine and int(machine.group(1)) == os.cpu_count()
    assert ("busier than its cores" in text) == (float(machine.group(4)) > os.cpu_count())
    assert f"Date: {datetime.datetime.now(datetime.UTC).date().isoformat()} (UTC)" in text
    assert common.write_page("x.py", "t", table, smoke=True) is None  # a --quick run leaves docs/ alone
    assert not (common.PAGES / "x.md").exists()


def test_a_path_beside_the_repo_is_named_relative_even_through_a_link(tmp_path, monkeypatch):
    """The real-MELD page names its data folder: ``../shared/meld-text``, also where ``shared`` is a link."""
    common = benchmark("common")
    (tmp_path / "elsewhere" / "meld-text").mkdir(parents=True)
    (tmp_path / "shared").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setattr(common, "REPO", tmp_path / "repo")
    assert common.repo_relative(str(tmp_path / "shared" / "meld-text")) == "../shared/meld-text"
    assert common.repo_relative("/usr/share/x") == "/usr/share/x" and common.repo_relative("rel/x") == "rel/x"


def test_every_benchmark_page_names_the_script_that_wrote_it_and_the_index_lists_it():
    pages = sorted(p for p in (REPO / "docs" / "benchmarks").glob("*.md") if p.name != "README.md")
    index = (REPO / "docs" / "benchmarks" / "README.md").read_text()
    for page in pages:
        named = re.findall(r"Written by `benchmarks/([\w]+\.py)`", page.read_text())
        assert named == [f"{page.stem}.py"] and (BENCH / named[0]).is_file(), page.name
        assert f"[{page.name}]({page.name})" in index, f"docs/benchmarks/README.md does not list {page.name}"
    for script in SCRIPTS:
        assert f"`benchmarks/{script.name}`" in index, f"docs/benchmarks/README.md does not list {script.name}"


def test_every_relative_link_in_the_readme_and_docs_resolves():
    """A page not yet written (meld_erc.md before its first full run) is named, never linked."""
    broken = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if path and "://" not in path and not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_every_script_writes_its_page_and_measures_with_the_shared_helpers():
    for script in SCRIPTS:
        source = script.read_text()
        assert "common.write_page(__file__" in source, script.name
        for private in ("def log(", "ru_maxrss", "VmHWM", "perf_counter", "getrusage"):
            assert private not in source, f"{script.name} has its own {private!r}: use benchmarks/common.py"
        assert not re.search(r"from hlm12erc[.\w]* import .*\b_[a-z]|\bhlm12erc[.\w]*\._[a-z]", source), script.name


def test_run_measured_reports_the_child_peak_memory_and_time():
    common = benchmark("common")
    proc, seconds, peak = common.run_measured([sys.executable, "-c", "import time; x = bytearray(300 << 20); "
                                               "x[::4096] = b'1' * len(x[::4096]); time.sleep(0.2); print('ok')"])
    assert proc.returncode == 0 and proc.stdout.strip() == "ok"
    assert 300 < peak < 1000 and seconds >= 0.2
    with common.timed() as t:
        sum(range(10 ** 5))
    assert 0 < t.seconds < 5


def test_train_throughput_gives_the_bf16_over_fp32_ratio_per_encoder():
    train_throughput = benchmark("train_throughput")
    rows = [{"encoder": e, "precision": p, "ran": p, "shape": [32, 80], "threads": 2, "s_per_step": s,
             "peak_rss_mib": 900.0} for e, p, s in (("minilm", "fp32", 1.6), ("minilm", "bf16", 0.8),
                                                    ("mpnet", "fp32", 7.0))]
    lines = train_throughput.steps_markdown(rows).splitlines()
    assert "| minilm | bf16 | bf16 | 32x80 | 2 | 0.80 | 900 |" in lines
    assert "| minilm | 1.60 | 0.80 | 0.50 | 2.00x |" in lines
    assert not any(line.startswith("| mpnet | 7.00") for line in lines)  # no bf16 row: no ratio


def tiny_model(out_dir: Path) -> Path:
    """A 1-epoch fusion model on random features shaped like the real encoders' output (no featurize)."""
    from hlm12erc.features.audio import build_audio_encoder
    from hlm12erc.features.visual import build_face_encoder, build_frame_encoder
    from hlm12erc.training.fit import fit, new_model

    params = benchmark("common").params_with({"labels": list(ERC_LABELS), "train": {"device": "cpu", "patience": 1},
                                              "objectives": {"multimodal": {"epochs": 1}}})
    visual = params.features.visual
    dims = {"text": 768, "audio": build_audio_encoder(params.features.audio).dim,
            "visual": build_frame_encoder(visual).dim + build_face_encoder(visual).dim}
    train_set, valid_set = erc_random_features(28, 0, dims, ERC_LABELS), erc_random_features(14, 1, dims, ERC_LABELS)

    def table(features):  # the 1NF columns the model reads besides the features
        frame = features.index.copy()
        frame["split"], frame["speaker"], frame["x_text"] = "train", "Ross", "hi"
        return frame

    model = new_model(params.objective("multimodal"), params, dims)
    fit(model, table(train_set), table(valid_set), train_set, valid_set, params, progress=False)
    return model.save(out_dir)


def tiny_clips(folder: Path) -> Path:
    from hlm12erc.data import demo

    for i in range(2):
        demo.write_clip(folder / f"dia0_utt{i}.mp4", "joy", "anger", seconds=0.6, seed=i, size=(160, 120), fps=12)
    return folder


@pytest.mark.slow  # a whole-pipeline subprocess run
def test_pipeline_throughput_quick(erc_tables, tmp_path):
    model = tiny_model(tmp_path / "model")
    clips = tiny_clips(tmp_path / "clips")
    out, pages = tmp_path / "out", tmp_path / "pages"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "HLM12ERC_BENCH_PAGES": str(pages)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--tables", str(erc_tables), "--clips", str(clips),
                           "--model", str(model), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (pages / "pipeline_throughput.md").read_text()
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip().strip("|").split("|")] for line in page.splitlines()
             if line.startswith("| ") and not line.startswith("| conversation"))}
    assert set(rows) == {"text only", "with clips"}
    for name, (turns, cold, cold_rss, *cells) in rows.items():
        assert int(turns) == 10
        assert all(float(c) > 0 for c in cells), (name, cells)
        assert (cold == cold_rss == "-") if name == "text only" else (float(cold) > 0 and float(cold_rss) > 100)
    used = {r["setting"]: r["used"] for r in json.loads((out / "results.json").read_text())["predict"]}
    assert used == {"text": ["text"], "clips": ["text+audio+visual"]}


def test_pipeline_throughput_missing_inputs(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tables", str(tmp_path / "none")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode != 0
    assert "make demo" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


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
        rows += [meld_erc.row("text_finetune (2 encoder(s))", seed, dev, base, ERC_LABELS, 1.0, 0.5, setting="a",
                              encoder="minilm", precision="bf16", step_s=0.8, peak_rss_mib=2000.0 + seed),
                 meld_erc.row("final, same as text_finetune", seed, dev, base, ERC_LABELS, 1.0, 0.5, setting="a"),
                 meld_erc.row("final, perfect", seed, dev, truth, ERC_LABELS, 1.0, 0.5, setting="a")]
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
    tf = cells["text_finetune (2 encoder(s))"]
    assert tf[-6:] == ["minilm", "bf16", "0.80", "1.0", "2002", "a |"]  # encoder, precision, s/step, min, RSS, settings
    assert meld_erc.table_markdown(rows, ERC_LABELS).splitlines()[0].count("95% CI") == 0  # no dev: no intervals


def test_meld_benchmark_pairs_each_setting_with_its_own_text_finetune():
    import numpy as np
    import pandas as pd

    meld_erc = benchmark("meld_erc")
    dev = pd.DataFrame({"dialogue": np.repeat(np.arange(30), 5), "label": np.array(ERC_LABELS * 22)[:150]})
    truth = np.eye(len(ERC_LABELS))[[ERC_LABELS.index(v) for v in dev["label"]]]
    wrong = np.roll(truth, 1, axis=1)
    rows = [meld_erc.row("text_finetune (1 encoder(s))", 42, dev, truth, ERC_LABELS, 1.0, 0.5, setting="fp32"),
            meld_erc.row("final", 42, dev, truth, ERC_LABELS, 1.0, 0.5, setting="fp32"),
            meld_erc.row("text_finetune (1 encoder(s))", 42, dev, wrong, ERC_LABELS, 1.0, 0.5, setting="bf16"),
            meld_erc.row("final", 42, dev, truth, ERC_LABELS, 1.0, 0.5, setting="bf16")]
    lines = meld_erc.table_markdown(rows, ERC_LABELS, dev).splitlines()[2:]
    gains = {(line.split(" | ")[-1].rstrip(" |"), line.split(" | ")[0][2:]): line.split(" | ")[4] for line in lines}
    assert gains[("fp32", "final")] == "+0.000 (+0.000, +0.000)"
    assert gains[("bf16", "final")] == "+1.000 (+1.000, +1.000)"
    assert meld_erc.parse_overrides(["text_encoder.precision=bf16", "text_encoder.encoder=mpnet",
                                     "text_encoder.lr=5e-5", "objectives.final.windows=[]"]) == {
        "text_encoder": {"precision": "bf16", "encoder": "mpnet", "lr": 5e-5}, "objectives": {"final": {"windows": []}}}


def test_meld_benchmark_refuses_encoders_cached_with_other_params(tmp_path):
    """A cached seed folder is reused only for the text_encoder params it was trained with."""
    meld_erc = benchmark("meld_erc")
    params = meld_erc.common.params_with({"text_encoder": {"precision": "bf16"}})
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "config.json").write_text("{}")
    saved = {k: v for k, v in meld_erc.common.fields_of(params.text_encoder).items()
             if k not in ("eval_batch_size", "precision")}  # a record older than the precision key: it ran fp32
    saved.update(epochs=params.text_encoder.epochs + 1, max_tokens=params.text_encoder.max_tokens + 1)
    (tmp_path / "text_encoder.json").write_text(json.dumps({"train_minutes": 1.0, "text_encoder": saved}))
    with pytest.raises(SystemExit, match=r"other text_encoder params \(epochs, max_tokens, precision\); pass another"):
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
