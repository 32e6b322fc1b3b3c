"""The generated demo corpus: MELD's shape, labels, broken clips, determinism."""

from __future__ import annotations

import re

import av
import numpy as np
import pandas as pd

from conftest import DATA_DEMO_DIALOGUES, DATA_DEMO_SEED
from hlm12erc.config import MELD_LABELS
from hlm12erc.data import demo, meld

TIME_RE = re.compile(r"^\d\d:\d\d:\d\d,\d\d\d$")


def test_tarball_shape_and_csv_schema(data_demo_corpus):
    root, _ = data_demo_corpus
    texts = []
    for split, folder in demo.CLIP_DIRS.items():
        frame = pd.read_csv(root / f"{split}_sent_emo.csv")
        assert tuple(frame.columns) == meld.MELD_COLUMNS
        assert frame["StartTime"].map(TIME_RE.match).all() and frame["EndTime"].map(TIME_RE.match).all()
        assert set(frame["Emotion"]) == set(MELD_LABELS), split  # all 7 labels in every split
        assert frame["Emotion"].value_counts().idxmax() == "neutral"
        per_dialogue = frame.groupby("Dialogue_ID")
        assert per_dialogue.size().between(4, 8).all()
        assert per_dialogue["Speaker"].nunique().between(2, 4).all()
        assert frame["Dialogue_ID"].nunique() == DATA_DEMO_DIALOGUES[split]
        assert (root / folder).is_dir()
        texts += list(frame["Utterance"])
    assert any("\u2019" in t for t in texts)


def test_broken_clips_in_train_and_test(data_demo_corpus):
    root, broken = data_demo_corpus
    assert set(broken) == {"train", "test"}
    for split, kinds in broken.items():
        assert sorted(kinds.values()) == sorted(demo.BROKEN)
        folder = root / demo.CLIP_DIRS[split]
        for cid, kind in kinds.items():
            assert (folder / f"{cid}.mp4").exists() == (kind != "missing")


def test_clips_are_h264_aac(data_demo_corpus):
    root, broken = data_demo_corpus
    clips = sorted((root / "dev_splits_complete").glob("*.mp4"))
    assert len(clips) == len(pd.read_csv(root / "dev_sent_emo.csv"))
    with av.open(str(clips[0])) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert (video.width, video.height) == (demo.WIDTH, demo.HEIGHT)
        assert 1.0 <= container.duration / 1e6 <= 4.2
    cid = next(c for c, k in broken["train"].items() if k == "no_audio")
    with av.open(str(root / "train_splits" / f"{cid}.mp4")) as container:
        assert container.streams.video and not container.streams.audio


def test_same_seed_same_csvs(data_demo_corpus, tmp_path):
    root, broken = data_demo_corpus
    again = demo.generate(tmp_path, seed=DATA_DEMO_SEED, dialogues=DATA_DEMO_DIALOGUES, write_clips=False)
    assert again == broken
    for split in demo.CLIP_DIRS:
        name = f"{split}_sent_emo.csv"
        assert (tmp_path / name).read_bytes() == (root / name).read_bytes()
    other = tmp_path / "other"
    demo.generate(other, seed=DATA_DEMO_SEED + 1, dialogues=DATA_DEMO_DIALOGUES, write_clips=False)
    assert (other / "train_sent_emo.csv").read_bytes() != (root / "train_sent_emo.csv").read_bytes()


def test_same_seed_same_clip_content(tmp_path):
    def decode(path):
        with av.open(str(path)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            c.seek(0)
            audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
        return np.stack(frames), audio

    a = decode(demo.write_clip(tmp_path / "a.mp4", "joy", "anger", 1.5, seed=11))
    b = decode(demo.write_clip(tmp_path / "b.mp4", "joy", "anger", 1.5, seed=11))
    c = decode(demo.write_clip(tmp_path / "c.mp4", "joy", "anger", 1.5, seed=12))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_media_codes_differ_by_label():
    """The expressed label drives colour (video) and pitch (audio): the signal the models learn."""
    rng = np.random.default_rng(0)
    colours = {lab: demo._video_frames(lab, 0.2, rng)[0][2, 2].astype(int) for lab in MELD_LABELS}
    pitches = {}
    for lab in MELD_LABELS:
        sig = demo._audio_signal(lab, 1.0, rng)[0]
        spectrum = np.abs(np.fft.rfft(sig))
        pitches[lab] = int(np.argmax(spectrum))  # 1 Hz bins
    assert len({tuple(c // 8) for c in colours.values()}) == len(MELD_LABELS)
    assert len(set(pitches.values())) == len(MELD_LABELS)
