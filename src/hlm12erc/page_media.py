"""The media of the error-analysis pages: each turn's centre frame as a small JPEG and its audio.

Both are embedded as data URIs (the audio as 8 kHz 16-bit wavs) while a page's audio fits
:data:`AUDIO_BUDGET` bytes; above that the pipeline's pages link each wav relative to the page, and a
predict page (whose media is temporary) has none. Missing media is one line per kind.
"""

from __future__ import annotations

import base64
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

THUMB_BOX = (96, 72)  # max thumbnail width, height (letterbox bars cropped first)
THUMB_QUALITY = 70
EMBED_RATE = 8000  # Hz of embedded audio: speech stays intelligible at a quarter of 16 kHz float's size
AUDIO_BUDGET = 4_000_000  # bytes of embedded wav per page (about 4 minutes at 8 kHz 16-bit)


def warn(line: str, notes: list[str] | None = None) -> None:
    print(f"pages: {line}", file=sys.stderr)
    if notes is not None:
        notes.append(line)


# ----------------------------------------------------------------------------- media

@dataclass
class Media:
    """Each table row's thumbnail and readable wav, worked out once for every page of a split."""

    thumbs: list[str]  # data URI, or "" (then ``why`` says why)
    why: list[str]
    wavs: list[Path | None]  # readable wavs
    problems: list[str]  # per row: "" or what went wrong at page time ("frame missing", ...)
    embedded: list[str] | None  # wav data URIs when the audio fits the budget
    linked: bool  # over the budget: the pages link each wav (relative to the page)
    audio_note: str
    notes: list[str] = field(default_factory=list)


def thumbnail(folder: str) -> tuple[str, str]:
    """(JPEG data URI of the centre frame, "") or ("", why not)."""
    from PIL import Image

    if not folder:
        return "", "no frame"
    pngs = Path(folder).glob("*.png") if Path(folder).is_dir() else []
    files = sorted(pngs, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))
    if not files:
        return "", "frame missing"
    try:
        with Image.open(files[len(files) // 2]) as image:
            image = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return "", "frame unreadable"
    box = image.convert("L").point(lambda v: 255 if v > 12 else 0).getbbox()  # crop the letterbox bars
    if box:
        image = image.crop(box)
    image.thumbnail(THUMB_BOX, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMB_QUALITY, optimize=False, progressive=False, subsampling=2)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), ""


def wav_seconds(path: str) -> float | None:
    """The duration of a readable, non-empty audio file; None otherwise."""
    import soundfile

    try:
        info = soundfile.info(path)
    except (RuntimeError, OSError, ValueError, TypeError):
        return None
    return info.frames / info.samplerate if info.frames > 0 and info.samplerate > 0 else None


def embedded_wav(path: Path) -> str:
    """The audio as an 8 kHz 16-bit mono wav data URI."""
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(1)
    if rate != EMBED_RATE:
        if rate % EMBED_RATE == 0:  # block means: a cheap low-pass before dropping samples
            step = rate // EMBED_RATE
            mono = mono[: len(mono) // step * step].reshape(-1, step).mean(1)
        else:
            times = np.arange(int(len(mono) * EMBED_RATE / rate)) * (rate / EMBED_RATE)
            mono = np.interp(times, np.arange(len(mono)), mono)
    wav = io.BytesIO()  # a 16-bit wav: libsndfile adds its timestamped PEAK chunk to float wavs only
    soundfile.write(wav, mono, EMBED_RATE, subtype="PCM_16", format="WAV")
    return "data:audio/wav;base64," + base64.b64encode(wav.getvalue()).decode("ascii")


def collect_media(table: pd.DataFrame, audio_budget: int = AUDIO_BUDGET, can_link: bool = True,
                  fix: str = "re-run the extract stage (`dvc repro extract`)") -> Media:
    """Thumbnails and audio of every row (``x_visual``/``x_audio`` absolute, as :func:`load_table` gives them)."""
    thumbs, why, wavs, problems, seconds = [], [], [], [], 0.0
    blank = pd.Series([""] * len(table))
    frames, sounds = table.get("x_visual", blank), table.get("x_audio", blank)
    bad: dict[str, list[str]] = {}
    for clip, folder, wav in zip(table["clip_id"].astype(str), frames, sounds):
        uri, reason = thumbnail(folder)
        thumbs.append(uri)
        why.append(reason)
        problem = [reason] if folder and reason else []
        length = wav_seconds(wav) if wav else None
        wavs.append(Path(wav) if length else None)
        seconds += length or 0.0
        if wav and not length:
            problem.append("wav missing" if not Path(wav).is_file() else "wav unreadable")
        problems.append(" · ".join(problem))
        for kind in problem:
            bad.setdefault(kind, []).append(clip)
    media = Media(thumbs, why, wavs, problems, None, False, "none")
    for kind, clips in bad.items():
        shown = ", ".join(clips[:3]) + (f" and {len(clips) - 3} more" if len(clips) > 3 else "")
        warn(f"{len(clips)} turn(s) with {kind} ({shown}): shown with that media marked missing; {fix}",
             media.notes)
    need = int(seconds * EMBED_RATE * 2) + 44 * sum(w is not None for w in wavs)
    if not need:
        return media
    if need <= audio_budget:
        media.embedded = [embedded_wav(w) if w else "" for w in wavs]
        media.audio_note = f"embedded ({EMBED_RATE // 1000} kHz, {need / 1e6:.1f} MB)"
    elif can_link:
        media.linked = True
        media.audio_note = (f"linked to the wav files ({need / 1e6:.0f} MB at {EMBED_RATE // 1000} kHz is over the "
                            f"{audio_budget / 1e6:g} MB budget): plays from the checkout, not inside MLflow")
    else:
        media.audio_note = f"not embedded: {need / 1e6:.1f} MB is over the {audio_budget / 1e6:g} MB budget"
    return media
