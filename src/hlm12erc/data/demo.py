"""A generated MELD-shaped demo corpus (MELD.Raw's tarball shape, real H.264/AAC ``.mp4`` clips), so
every later stage runs on it as on the real data, offline, in seconds.

Each modality independently *expresses* the true label with probability :data:`EXPRESS_P` (else a
uniformly drawn one): emotion words in neutral filler, a tone whose pitch, loudness and beep rate
code the label, a coloured background with a drawn face. So each unimodal model reaches roughly
60-65% and fusion clearly more. As in the real MELD, train and test each hold one clip per
:data:`BROKEN` kind: truncated, without audio, audio-only, and a CSV row without a clip file.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from hlm12erc.data.meld import CLIP_DIRS
from hlm12erc.workers import pool as die_with_parent_pool

LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
# MELD-like imbalance (neutral most common) while every label stays well represented.
LABEL_WEIGHTS = {"neutral": 0.26, "joy": 0.15, "surprise": 0.13, "anger": 0.12,
                 "sadness": 0.12, "fear": 0.11, "disgust": 0.11}
SENTIMENT = {"anger": "negative", "disgust": "negative", "fear": "negative", "sadness": "negative",
             "joy": "positive", "surprise": "positive", "neutral": "neutral"}
EXPRESS_P = 0.6
SPEAKERS = ("Chandler", "Joey", "Monica", "Phoebe", "Rachel", "Ross")
BROKEN = ("corrupt", "no_audio", "missing", "no_video")  # injected in train and test
BROKEN_SPLITS = ("train", "test")

WIDTH, HEIGHT, FPS = 160, 120, 15
AUDIO_RATE = 22050  # deliberately not 16 kHz, and stereo, so extract must resample and downmix

_PHRASES = {
    "anger": ["I am so mad at you", "this is ridiculous", "stop yelling", "you make me furious",
              "get out of my apartment", "how dare you"],
    "disgust": ["that is so gross", "ew, disgusting", "that smells horrible", "yuck, seriously",
                "that’s nasty", "I feel sick looking at it"],
    "fear": ["I’m really scared", "oh no, what if they find out", "I am terrified",
             "that is so creepy", "please don’t leave me alone", "I’m nervous"],
    "joy": ["this is awesome", "I love it", "that’s wonderful", "we did it, yay",
            "I’m so happy for you", "great news"],
    "neutral": ["okay", "the coffee place", "on Tuesday", "it’s the blue one", "I guess so",
                "at the apartment"],
    "sadness": ["I miss her so much", "I’m so sorry", "that’s really sad", "I feel terrible",
                "he broke up with me", "nobody came"],
    "surprise": ["what?! really?", "oh my God!", "no way!", "you’re kidding!", "wow, seriously?!",
                 "are you serious?!"],
}
_TEMPLATES = ["{p}.", "Well, {p}.", "You know, {p}.", "So {p}, right?", "Hey, {p}.",
              "I mean, {p}.", "{p}, you know?", "Okay, {p}."]
# Per-label media codes: (tone Hz, amplitude, beeps per second) and (background RGB, mouth
# curvature -1..1, brow tilt -1..1, eye radius px).
_AUDIO = {"anger": (420.0, 0.85, 6.0), "disgust": (260.0, 0.55, 2.0), "fear": (620.0, 0.45, 8.0),
          "joy": (520.0, 0.75, 4.0), "neutral": (220.0, 0.35, 1.0), "sadness": (160.0, 0.30, 0.5),
          "surprise": (760.0, 0.80, 3.0)}
_VIDEO = {"anger": ((200, 40, 40), -0.8, 1.0, 4), "disgust": ((90, 140, 40), -0.5, 0.4, 3),
          "fear": ((120, 60, 160), -0.3, -0.8, 7), "joy": ((240, 200, 40), 1.0, 0.0, 5),
          "neutral": ((128, 128, 128), 0.0, 0.0, 5), "sadness": ((40, 70, 180), -1.0, -0.5, 4),
          "surprise": ((240, 130, 30), 0.2, -1.0, 8)}


@dataclass(frozen=True)
class ClipSpec:
    """Everything a worker needs to write one clip (picklable, deterministic)."""

    path: str
    kind: str  # ok | corrupt | no_audio | no_video
    audio_label: str
    video_label: str
    seconds: float
    seed: int


def _expressed(rng: np.random.Generator, label: str) -> str:
    return label if rng.random() < EXPRESS_P else LABELS[int(rng.integers(len(LABELS)))]


def _label_sequence(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` labels with MELD-like proportions; every label present once ``n >= 7``."""
    labels = list(LABEL_WEIGHTS)
    weights = np.array([LABEL_WEIGHTS[lab] for lab in labels])
    counts = np.floor(weights * n).astype(int)
    if n >= len(labels):
        counts = np.maximum(counts, 1)
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    order = np.argsort(-weights)
    i = 0
    while counts.sum() < n:
        counts[order[i % len(order)]] += 1
        i += 1
    seq = [lab for lab, c in zip(labels, counts) for _ in range(int(c))]
    rng.shuffle(seq)
    return seq


def _timestamp(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _text(rng: np.random.Generator, label: str) -> str:
    phrase = _PHRASES[label][int(rng.integers(len(_PHRASES[label])))]
    text = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(p=phrase)
    text = text.replace("!.", "!").replace("?.", "?").replace("?, right?", "? Right?")
    return text[0].upper() + text[1:]


def _audio_signal(label: str, seconds: float, rng: np.random.Generator,
                  rate: int = AUDIO_RATE) -> np.ndarray:
    """Stereo float32 (2, n): a beeping, slightly vibrato tone coded by ``label``, plus noise."""
    freq, amp, beeps = _AUDIO[label]
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    freq = freq * (1.0 + 0.05 * rng.standard_normal())
    phase = 2 * np.pi * freq * t + 0.3 * np.sin(2 * np.pi * 5.0 * t)
    voice = np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.2 * np.sin(3 * phase)
    gate = (np.sin(2 * np.pi * beeps * t + rng.uniform(0, 2 * np.pi)) > -0.2).astype(np.float64)
    level = amp * (1.0 + 0.15 * rng.standard_normal())
    mono = level * 0.5 * voice * gate + 0.05 * rng.standard_normal(n)
    return np.clip(np.stack([mono, mono * 0.9]), -1, 1).astype(np.float32)


def _video_frames(label: str, seconds: float, rng: np.random.Generator) -> list[np.ndarray]:
    """RGB uint8 frames: a label-coloured background and a drawn face coded by ``label``."""
    import cv2

    colour, mouth, brow, eye = _VIDEO[label]
    base = np.clip(np.array(colour) + rng.normal(0, 18, 3), 0, 255)
    cx, cy = WIDTH // 2 + int(rng.integers(-15, 16)), HEIGHT // 2 + int(rng.integers(-8, 9))
    frames = []
    for i in range(max(1, int(round(seconds * FPS)))):
        img = np.full((HEIGHT, WIDTH, 3), base.astype(np.uint8), np.uint8)
        x, y = cx + int(round(3 * np.sin(i / 4))), cy + int(round(2 * np.cos(i / 5)))
        cv2.circle(img, (x, y), 38, (235, 200, 170), -1)
        for side in (-1, 1):
            ex = x + side * 14
            cv2.circle(img, (ex, y - 8), eye, (20, 20, 20), -1)
            tilt = int(round(brow * 5)) * side
            cv2.line(img, (ex - 8, y - 20 - tilt), (ex + 8, y - 20 + tilt), (60, 30, 10), 2)
        depth = int(round(12 * mouth))
        pts = np.array([(x - 16, y + 16), (x, y + 16 + depth), (x + 16, y + 16)], np.int32)
        cv2.polylines(img, [pts], False, (120, 20, 30), 3)
        noise = rng.standard_normal(img.shape, dtype=np.float32) * 10
        frames.append(np.clip(img + noise, 0, 255).astype(np.uint8))
    return frames


def write_clip(path: str | os.PathLike[str], audio_label: str = "neutral", video_label: str = "neutral",
               seconds: float = 2.0, seed: int = 0, video: bool = True, audio: bool = True,
               size: tuple[int, int] = (WIDTH, HEIGHT), fps: int = FPS,
               audio_rate: int = AUDIO_RATE, preset: str = "ultrafast") -> Path:
    """Encode one H.264 + AAC ``.mp4`` (either track can be left out). Deterministic per seed."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    with av.open(str(tmp), "w", format="mp4") as out:
        if video:
            vstream = out.add_stream("libx264", rate=fps)
            vstream.width, vstream.height = size
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"preset": preset, "crf": "28"}
            vstream.codec_context.thread_count = 1  # deterministic bitstream
        if audio:
            astream = out.add_stream("aac", rate=audio_rate, layout="stereo")
        if video:  # (every stream is added before the first packet is muxed)
            frames = _video_frames(video_label, seconds, rng)
            if size != (WIDTH, HEIGHT):
                import cv2
                frames = [cv2.resize(f, size) for f in frames]
            for i, img in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
        if audio:
            signal = _audio_signal(audio_label, seconds, rng, audio_rate)
            for start in range(0, signal.shape[1], 1024):
                block = np.ascontiguousarray(signal[:, start:start + 1024])
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
                frame.sample_rate = audio_rate
                frame.pts = start
                frame.time_base = Fraction(1, audio_rate)
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
    os.replace(tmp, path)
    return path


def _make_clip(spec: ClipSpec) -> str:
    kind = spec.kind
    write_clip(spec.path, spec.audio_label, spec.video_label, spec.seconds, spec.seed,
               video=kind != "no_video", audio=kind != "no_audio")
    if kind == "corrupt":  # a download cut short: the moov atom (at the end) is lost
        data = Path(spec.path).read_bytes()
        Path(spec.path).write_bytes(data[: max(64, len(data) // 3)])
    return spec.path


def generate(out_dir: str | os.PathLike[str], seed: int = 7,
             dialogues: Mapping[str, int] | None = None, jobs: int = 0,
             write_clips: bool = True) -> dict[str, dict[str, str]]:
    """Write the demo corpus into ``out_dir``; returns ``{split: {clip_id: broken_kind}}``. The same seed
    gives byte-identical CSVs and identical clips; ``write_clips=False`` writes only the CSVs."""
    from hlm12erc.config import resolve_jobs

    dialogues = dict(dialogues or {"train": 36, "dev": 10, "test": 14})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs: list[ClipSpec] = []
    broken: dict[str, dict[str, str]] = {}
    for split in ("train", "dev", "test"):
        n_dia = int(dialogues.get(split, 0))
        if n_dia <= 0:
            continue
        turns = rng.integers(4, 9, size=n_dia)
        labels = iter(_label_sequence(rng, int(turns.sum())))
        clip_dir = out / CLIP_DIRS[split]
        clip_dir.mkdir(exist_ok=True)
        rows, clip_rows = [], []
        for dia in range(n_dia):
            cast = rng.choice(SPEAKERS, size=int(rng.integers(2, 5)), replace=False)
            season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
            clock = float(rng.uniform(30, 1200))
            for utt in range(int(turns[dia])):
                label = next(labels)
                seconds = round(float(rng.uniform(1.0, 4.0)), 2)
                text = _text(rng, _expressed(rng, label))
                a_label, v_label = _expressed(rng, label), _expressed(rng, label)
                rows.append({"Sr No.": len(rows) + 1, "Utterance": text,
                             "Speaker": str(cast[utt % len(cast)] if utt < len(cast) else rng.choice(cast)),
                             "Emotion": label, "Sentiment": SENTIMENT[label], "Dialogue_ID": dia,
                             "Utterance_ID": utt, "Season": season, "Episode": episode,
                             "StartTime": _timestamp(clock), "EndTime": _timestamp(clock + seconds)})
                clock += seconds + float(rng.uniform(0.1, 1.5))
                clip_rows.append((f"dia{dia}_utt{utt}", a_label, v_label, seconds,
                                  int(rng.integers(2**31 - 1))))
        kinds = {}
        if split in BROKEN_SPLITS and len(clip_rows) > len(BROKEN):
            picks = rng.choice(len(clip_rows), size=len(BROKEN), replace=False)
            kinds = {clip_rows[int(i)][0]: kind for i, kind in zip(picks, BROKEN)}
            broken[split] = dict(sorted(kinds.items()))
        specs += [ClipSpec(str(clip_dir / f"{cid}.mp4"), kinds.get(cid, "ok"), *clip)
                  for cid, *clip in clip_rows if kinds.get(cid) != "missing"]
        with open(out / f"{split}_sent_emo.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    if not write_clips:
        return broken
    workers = min(resolve_jobs(jobs), max(1, len(specs)))
    if workers == 1:
        for spec in specs:
            _make_clip(spec)
    else:
        with die_with_parent_pool(workers) as pool:
            list(pool.map(_make_clip, specs, chunksize=8))
    return broken
