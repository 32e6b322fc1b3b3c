"""Clip -> frames + 16 kHz mono wav: sizes, durations, statuses, re-runs, split separation."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import cv2
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from hlm12erc import media, media_decode, media_manifest
from hlm12erc.config import ExtractParams
from hlm12erc.data import demo
from hlm12erc.workers import write_aside


def _job(src, out, split="train", cid="dia0_utt0"):
    return media.Job(split, cid, 0, 0, str(src) if src else None, str(out))


def test_frame_times_include_centre():
    assert np.allclose(media_decode.frame_times(6.0, 3), [1.0, 3.0, 5.0])
    assert np.allclose(media_decode.frame_times(6.0, 1), [3.0])
    assert 3.0 in [round(t, 6) for t in media_decode.frame_times(6.0, 4)]
    assert len(media_decode.frame_times(6.0, 4)) == 4


def test_clip_gives_frames_and_16k_mono_wav(tmp_path):
    src = demo.write_clip(tmp_path / "c.mp4", "joy", "joy", seconds=2.0, seed=1)
    params = ExtractParams(frames=3, frame_size=112)
    row, worked = media.extract_one(_job(src, tmp_path / "m"), params)
    assert worked and row["status"] == "ok" and abs(row["duration"] - 2.0) < 0.1
    frames = sorted((tmp_path / "m" / row["frames_dir"]).glob("*.png"))
    assert [f.name for f in frames] == ["0.png", "1.png", "2.png"]
    img = cv2.imread(str(frames[1]))
    assert img.shape == (112, 112, 3)
    # 160x120 letterboxed into 112x112: 84 rows of picture, 14 black rows above and below
    assert img[:12].max() == 0 and img[-12:].max() == 0 and img[20:90].mean() > 40
    audio, rate = sf.read(str(tmp_path / "m" / row["wav"]), always_2d=True)
    info = sf.info(str(tmp_path / "m" / row["wav"]))
    assert rate == 16000 and audio.shape[1] == 1 and info.subtype == "FLOAT"
    assert abs(len(audio) / rate - 2.0) <= 0.05
    assert np.abs(audio).max() > 0.05


def _ramp_clip(path, seconds, fps=5, size=(64, 48)):
    """Frame i has brightness 4*i: the extracted frame tells which time it came from."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "0", "g": "25"}
        for i in range(int(seconds * fps)):
            img = np.full((size[1], size[0], 3), 4 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_frames_are_taken_at_their_times_with_seeking(tmp_path):
    # 60 frames at 2 fps; 1/6, 1/2, 5/6 of 30 s = 5 s, 15 s, 25 s: gaps > SEEK_GAP_S, so it seeks
    src = _ramp_clip(tmp_path / "long.mp4", seconds=30.0, fps=2)
    row, _ = media.extract_one(_job(src, tmp_path / "m"), ExtractParams(frames=3, frame_size=32, max_seconds=60))
    assert row["status"] == "no_audio"
    assert row["wav"] == ""
    values = [cv2.imread(str(tmp_path / "m" / row["frames_dir"] / f"{k}.png"))[16, 16, 0] for k in range(3)]
    assert [round(v / 4) for v in values] == [10, 30, 50]  # frames 10, 30, 50


def test_too_long_is_cut(tmp_path):
    src = demo.write_clip(tmp_path / "c.mp4", seconds=3.0, seed=2)
    row, _ = media.extract_one(_job(src, tmp_path / "m"), ExtractParams(frame_size=112, max_seconds=1.0))
    assert row["status"] == "too_long" and abs(row["duration"] - 3.0) < 0.1
    audio, rate = sf.read(str(tmp_path / "m" / row["wav"]))
    assert abs(len(audio) / rate - 1.0) <= 0.05
    assert len(list((tmp_path / "m" / row["frames_dir"]).glob("*.png"))) == 3


def test_every_bad_media_status(data_demo_media, data_demo_corpus):
    _, broken = data_demo_corpus
    _, media_dir, manifest = data_demo_media
    assert tuple(manifest.columns) == media_manifest.MANIFEST_COLUMNS
    rows = manifest.set_index(["source_split", "clip_id"])
    for split, kinds in broken.items():
        for cid, kind in kinds.items():
            row = rows.loc[(split, cid)]
            assert row["status"] == kind, (split, cid)
            assert bool(row["frames_dir"]) == (kind == "no_audio")
            assert bool(row["wav"]) == (kind == "no_video")
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) == len(manifest) - 8
    for row in ok.itertuples():
        assert (media_dir / row.frames_dir / "2.png").exists() and (media_dir / row.wav).exists()


def test_corrupt_and_missing_write_nothing(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
    row, _ = media.extract_one(_job(bad, tmp_path / "m"), ExtractParams())
    assert row["status"] == "corrupt" and row["frames_dir"] == "" and row["wav"] == ""
    row, _ = media.extract_one(_job(tmp_path / "nope.mp4", tmp_path / "m", cid="dia1_utt0"), ExtractParams())
    assert row["status"] == "missing"
    assert not (tmp_path / "m" / "frames").exists() and not (tmp_path / "m" / "audio").exists()


def test_same_ids_in_two_splits_do_not_collide(data_demo_media):
    _, media_dir, manifest = data_demo_media
    rows = manifest[(manifest["clip_id"] == "dia0_utt0") & (manifest["status"] == "ok")]
    assert set(rows["source_split"]) == {"train", "dev", "test"}
    assert rows["frames_dir"].nunique() == 3 and rows["wav"].nunique() == 3
    images = [cv2.imread(str(media_dir / d / "1.png")) for d in rows["frames_dir"]]
    assert not np.array_equal(images[0], images[1]) or not np.array_equal(images[1], images[2])


def test_text_only_when_no_clips(data_demo_corpus, tmp_path):
    root, _ = data_demo_corpus
    descriptor = {"splits": {"dev": {"csv": str(root / "dev_sent_emo.csv"), "clips": None}}}
    manifest, worked = media.run_extract(descriptor, tmp_path / "m", ExtractParams(frame_size=112), progress=False,
                                         jobs=1)
    assert worked == 0 and set(manifest["status"]) == {"text_only"}
    assert len(manifest) == len(pd.read_csv(root / "dev_sent_emo.csv"))


def test_second_run_does_no_work_and_resumes(data_demo_corpus, tmp_path):
    root, _ = data_demo_corpus
    descriptor = {"splits": {"dev": {"csv": str(root / "dev_sent_emo.csv"),
                                     "clips": str(root / "dev_splits_complete")}}}
    params = ExtractParams(frame_size=48)
    first, worked = media.run_extract(descriptor, tmp_path / "m", params, progress=False, jobs=2)
    assert worked == len(first) > 0
    wav = tmp_path / "m" / first["wav"][0]
    mtime = wav.stat().st_mtime_ns
    second, worked = media.run_extract(descriptor, tmp_path / "m", params, progress=False, jobs=2)
    assert worked == 0 and wav.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(first, second)
    # an interruption lost one clip's outputs: only that clip is redone
    os.remove(tmp_path / "m" / first["wav"][3])
    _, worked = media.run_extract(descriptor, tmp_path / "m", params, progress=False, jobs=2)
    assert worked == 1
    # different params: everything is redone
    _, worked = media.run_extract(descriptor, tmp_path / "m", ExtractParams(frame_size=40), jobs=2,
                                  progress=False)
    assert worked == len(first)
    assert cv2.imread(str(tmp_path / "m" / first["frames_dir"][0] / "0.png")).shape == (40, 40, 3)


def test_a_failed_save_leaves_the_previous_model_folder(tmp_path):
    class HalfSaved:
        def save(self, folder):
            folder.mkdir(parents=True)
            (folder / "encoder_0.pt").write_bytes(b"half")
            raise SystemExit(143)  # SIGTERM mid-save

    out = tmp_path / "models" / "text_encoder"
    out.mkdir(parents=True)
    (out / "config.json").write_text("previous")
    with pytest.raises(SystemExit):
        write_aside(out, HalfSaved().save)
    assert [p.name for p in out.parent.iterdir()] == ["text_encoder"]
    assert [p.name for p in out.iterdir()] == ["config.json"] and (out / "config.json").read_text() == "previous"
    write_aside(out, lambda folder: (folder.mkdir(), (folder / "config.json").write_text("new")))
    assert [p.name for p in out.parent.iterdir()] == ["text_encoder"] and (out / "config.json").read_text() == "new"
