"""Frozen encoders on synthetic tables with real wavs and PNG frames."""

import numpy as np
import pandas as pd
import pytest

from conftest import ERC_LABELS
from hlm12erc.config import AudioFeatureParams, VisualFeatureParams
from hlm12erc.data.context import previous_turns
from hlm12erc.data.meld import load_table
from hlm12erc.features.audio import LogMelEncoder, audio_features, read_wav
from hlm12erc.features.store import FeatureSet
from hlm12erc.features.text import EMBEDDING_DIM
from hlm12erc.features.visual import build_face_encoder, build_frame_encoder, visual_features


def test_store_shapes_masks_and_index(erc_features_dir, erc_tables):
    for split in ("train", "valid", "test", "sample"):
        features = FeatureSet.load(erc_features_dir / split)
        table = pd.read_csv(erc_tables / f"{split}.csv")
        n = len(table)
        assert features.arrays["text"].shape == (n, 2 * EMBEDDING_DIM)
        assert features.arrays["audio"].shape == (n, 2 * 512)  # default: Whisper base mean + std
        assert features.arrays["visual"].shape[0] == n
        assert all(a.dtype == np.float32 for a in features.arrays.values())
        assert features.mask.shape == (n, 3) and features.mask.dtype == bool
        assert features.index["clip_id"].tolist() == table["clip_id"].tolist()  # table row order
        assert features.index.columns.tolist() == ["clip_id", "label", "dialogue", "sequence"]
        # rows 2 (no audio), 4 (no frames), 6 (audio file missing) are masked and zero
        assert features.mask[:, 0].all()
        assert not features.mask[2, 1] and not features.mask[6, 1] and not features.mask[4, 2]
        assert features.mask[0].all() and features.mask[3].all()
        assert not features.arrays["audio"][[2, 6]].any() and not features.arrays["visual"][4].any()
        assert np.abs(features.arrays["audio"][features.mask[:, 1]]).sum(1).min() > 0
        assert features.face_found.shape == (n,)


def test_text_features_embed_utterance_and_context(erc_features_dir):
    features = FeatureSet.load(erc_features_dir / "train")
    text = features.arrays["text"]
    norms = np.linalg.norm(text[:, :EMBEDDING_DIM], axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)  # L2-normalised mean pooling
    first_turns = features.index["sequence"].to_numpy() == 0
    assert not text[first_turns, EMBEDDING_DIM:].any()  # no previous turns -> zero context half
    assert np.allclose(np.linalg.norm(text[~first_turns, EMBEDDING_DIM:], axis=1), 1.0, atol=1e-4)
    same_text = features.index["label"] == features.index["label"].iloc[0]
    rows = np.flatnonzero(same_text)
    assert np.allclose(text[rows[0], :EMBEDDING_DIM], text[rows[1], :EMBEDDING_DIM], atol=1e-5)


def test_previous_turns_of_the_same_dialogue():
    table = pd.DataFrame({"dialogue": [1, 1, 1, 2, 1], "sequence": [0, 1, 2, 0, 3],
                          "speaker": ["A", "B", "A", "C", "B"], "x_text": ["hi", "yo", "ok", "new", "bye"]})
    contexts = previous_turns(table, window=2)
    assert contexts == ["", "A: hi", "A: hi\nB: yo", "", "B: yo\nA: ok"]
    assert previous_turns(table, window=0) == [""] * 5


def test_logmel_separates_tones_and_reads_missing_as_none(tmp_path):
    import soundfile

    encoder = LogMelEncoder(n_mels=32)
    t = np.arange(8000) / 16000
    low, high = encoder(np.sin(2 * np.pi * 200 * t).astype(np.float32)), encoder(
        np.sin(2 * np.pi * 2000 * t).astype(np.float32))
    assert low.shape == (3 * 32 + 9,) and np.isfinite(low).all()
    assert np.argmax(low[:32]) < np.argmax(high[:32])  # the loud mel band moves up with the pitch
    path = tmp_path / "x.wav"
    soundfile.write(str(path), np.sin(2 * np.pi * 200 * np.arange(4410) / 44100).astype(np.float32), 44100)
    assert len(read_wav(path)) == pytest.approx(1600, abs=2)  # resampled to 16 kHz
    assert read_wav(tmp_path / "missing.wav") is None
    assert np.isfinite(encoder(np.zeros(50, np.float32))).all()  # tiny clip padded, no NaN


def test_visual_without_a_face_is_zeros_and_flagged(erc_tables):
    table = load_table(erc_tables / "valid.csv", ERC_LABELS)
    faces = VisualFeatureParams(encoder="stats", faces="mtcnn")
    features, present, face_found = visual_features(table, faces, progress=False)
    assert present.sum() == len(table) - 1 and not face_found.any()  # drawn rectangles are not faces
    frame_dim = build_frame_encoder(faces).dim
    assert features.shape[1] == frame_dim + 7 + 128 + 1
    assert not features[:, frame_dim:].any()  # no face: the FER part and the face share are 0
    no_faces, _, _ = visual_features(table, VisualFeatureParams(encoder="stats", faces="none"), progress=False)
    assert no_faces.shape[1] == 25 + 4 * 4


def test_unknown_encoders_fail_naming_the_known_ones():
    with pytest.raises(ValueError, match="not known; use one or more of efficientnet_lite0, stats"):
        build_frame_encoder(VisualFeatureParams(encoder="efficientnet_lite0+torchvision"))
    for removed in ("egemaps", "mfcc"):
        with pytest.raises(ValueError, match="not known; use whisper or logmel"):
            audio_features(pd.DataFrame({"x_audio": []}), AudioFeatureParams(encoder=removed))
    with pytest.raises(ValueError, match="faces='haar' is not known; use mtcnn or none"):
        build_face_encoder(VisualFeatureParams(faces="haar"))
