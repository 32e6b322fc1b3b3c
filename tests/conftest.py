"""Shared test fixtures. Everything is generated in tmp dirs; nothing is downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Model-half fixtures (features / model / training / tracking tests): tiny synthetic 1NF tables
# with generated wavs and PNG frames, independent of the data stages' code.
# ---------------------------------------------------------------------------------------------

ERC_LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
ERC_TEXTS = {
    "anger": "I am so angry with you, get out!",
    "disgust": "Ugh, that is gross, I hate it.",
    "fear": "I'm scared, something terrible is coming.",
    "joy": "This is wonderful, I love it so much!",
    "neutral": "The meeting is at three o'clock.",
    "sadness": "I miss her, I feel so alone.",
    "surprise": "What? No way, really?",
}


def erc_write_clip_media(media_dir: Path, clip: str, label_id: int, rng: np.random.Generator,
                         frames: int = 3) -> tuple[str, str]:
    """A label-dependent tone (16 kHz mono wav) and K coloured PNG frames for one clip."""
    import cv2
    import soundfile

    rate, seconds = 16000, 0.5
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (150 + 60 * label_id) * t) + 0.01 * rng.standard_normal(len(t))
    wav = media_dir / "audio" / f"{clip}.wav"
    wav.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(wav), wave.astype(np.float32), rate)
    folder = media_dir / "frames" / clip
    folder.mkdir(parents=True, exist_ok=True)
    colour = np.array([30 * label_id % 255, 200 - 25 * label_id, 90 + 20 * label_id], dtype=np.uint8)
    for k in range(frames):
        image = np.tile(colour, (48, 48, 1)) + rng.integers(0, 20, (48, 48, 3), dtype=np.uint8)
        cv2.rectangle(image, (10 + 2 * k, 12), (30 + 2 * k, 36), (255, 255, 255), -1)
        cv2.imwrite(str(folder / f"{k}.png"), image)
    return f"../media/frames/{clip}", f"../media/audio/{clip}.wav"


def erc_make_tables(root: Path, rows: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``root/tables/{train,valid,test,sample}.csv`` (1NF schema) + ``root/media``; returns the tables dir.

    Labels cycle through all 7 classes; dialogues have 5 turns. Row 2 of each table has no
    audio, row 4 no frames, row 6 an audio path that does not exist (masked, never zeros-as-real).
    """
    rows = rows or {"train": 28, "valid": 14, "test": 14, "sample": 14}
    rng = np.random.default_rng(seed)
    tables_dir, media_dir = root / "tables", root / "media"
    tables_dir.mkdir(parents=True, exist_ok=True)
    for split_number, (split, n) in enumerate(rows.items()):
        records = []
        for i in range(n):
            label_id = (i * 3 + split_number) % len(ERC_LABELS)
            dialogue, sequence = 100 * split_number + i // 5, i % 5
            clip = f"dia{dialogue}_utt{sequence}"
            visual, audio = erc_write_clip_media(media_dir, f"{split}_{clip}", label_id, rng)
            status = "ok"
            if i == 2:
                audio, status = "", "no_audio"
            if i == 4:
                visual, status = "", "no_video"
            if i == 6:
                audio = "../media/audio/does_not_exist.wav"
            label = ERC_LABELS[label_id]
            records.append({"split": split, "source_split": split, "dialogue": dialogue, "sequence": sequence,
                            "clip_id": clip, "speaker": ["Ross", "Rachel", "Joey"][i % 3],
                            "x_text": ERC_TEXTS[label], "x_text_raw": ERC_TEXTS[label], "x_visual": visual,
                            "x_audio": audio, "label": label, "sentiment": "neutral", "media_status": status})
        pd.DataFrame(records).to_csv(tables_dir / f"{split}.csv", index=False)
    return tables_dir


def erc_random_features(n: int, seed: int = 0, dims: dict[str, int] | None = None,
                        labels: list[str] | None = None):
    """A FeatureSet of random, label-correlated arrays (no encoders): fast model/trainer tests."""
    from hlm12erc.features.store import FeatureSet

    dims = dims or {"text": 12, "audio": 8, "visual": 6}
    labels = labels or ERC_LABELS
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % len(labels)
    arrays = {}
    for m, d in dims.items():
        centres = np.random.default_rng(len(m)).standard_normal((len(labels), d))
        arrays[m] = (centres[targets] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    mask = np.ones((n, 3), dtype=bool)
    mask[1::5, 1] = False
    mask[2::7, 2] = False
    for i, m in enumerate(dims):
        arrays[m][~mask[:, i]] = 0.0
    index = pd.DataFrame({"clip_id": [f"dia{i // 5}_utt{i % 5}" for i in range(n)],
                          "label": [labels[t] for t in targets], "dialogue": np.arange(n) // 5,
                          "sequence": np.arange(n) % 5})
    return FeatureSet(arrays, mask, np.zeros(n, dtype=bool), index)


@pytest.fixture(scope="session")
def erc_tables(tmp_path_factory) -> Path:
    """Synthetic 1NF tables with real wav/PNG media (session-wide, read-only by convention)."""
    return erc_make_tables(tmp_path_factory.mktemp("erc_data"))


@pytest.fixture(scope="session")
def erc_features_dir(erc_tables, tmp_path_factory) -> Path:
    """The synthetic tables featurized once with the real frozen encoders (MiniLM loads once)."""
    from hlm12erc.config import FeatureParams
    from hlm12erc.features.featurize import featurize_tables

    out = tmp_path_factory.mktemp("erc_features")
    featurize_tables(erc_tables, out, FeatureParams(), ERC_LABELS, log=lambda _: None)
    return out


@pytest.fixture
def erc_mlflow_uri(tmp_path, monkeypatch) -> str:
    """Point tracking at a tmp sqlite store: tests never touch the repo's mlflow.db."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("HLM12ERC_MLFLOW_URI", uri)
    return uri


# ---------------------------------------------------------------------------------------------
# Data-half fixtures (sources / demo / media / tables tests): a tiny generated demo corpus in
# MELD.Raw's tarball shape, and its extracted media. Session-scoped: generated once per run.
# ---------------------------------------------------------------------------------------------

DATA_DEMO_DIALOGUES = {"train": 6, "dev": 3, "test": 4}
DATA_DEMO_SEED = 3


@pytest.fixture(scope="session")
def data_demo_corpus(tmp_path_factory):
    """(root, broken): a tiny demo MELD.Raw folder and its {split: {clip_id: broken kind}}."""
    from hlm12erc.data import demo

    root = tmp_path_factory.mktemp("demo") / "MELD.Raw"
    broken = demo.generate(root, seed=DATA_DEMO_SEED, dialogues=DATA_DEMO_DIALOGUES, jobs=2)
    return root, broken


@pytest.fixture(scope="session")
def data_demo_media(data_demo_corpus, tmp_path_factory):
    """(descriptor, media_dir, manifest): the tiny demo corpus extracted with small (112 px) frames."""
    from hlm12erc import media
    from hlm12erc.config import ExtractParams
    from hlm12erc.data import sources

    root, _ = data_demo_corpus
    descriptor = {"source": "demo", **sources.detect_layout(root)}
    media_dir = tmp_path_factory.mktemp("work") / "media"
    manifest, _ = media.run_extract(descriptor, media_dir, ExtractParams(frame_size=112), progress=False, jobs=2)
    return descriptor, media_dir, manifest


# ---------------------------------------------------------------------------------------------
# Text-encoder fixtures: the real MiniLM tokenizer (bundled) and a tiny random BERT that fine-tunes in seconds.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tokenizer():
    from hlm12erc.models.text_encoder import encoder_path, load_tokenizer

    return load_tokenizer(encoder_path("minilm"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> str:
    from finetune_support import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tokenizer)


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Selenium (its driver given: Selenium Manager downloads nothing)."""
    import shutil
    import tempfile

    chromium, driver_path = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.is_file() and driver_path.exists()):
        pytest.skip("no /usr/bin/chromium or /usr/bin/chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="hlm12erc-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1400", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(driver_path)), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
