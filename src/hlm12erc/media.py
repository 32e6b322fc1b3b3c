"""Clip -> K letterboxed PNG frames + a 16 kHz mono float wav, decoded in-process with PyAV.

Per utterance of every split in the descriptor (clip ``<clips>/dia{D}_utt{U}.mp4``)::

    <media>/frames/<source_split>/dia{D}_utt{U}/{0..K-1}.png   (frame_size x frame_size RGB)
    <media>/audio/<source_split>/dia{D}_utt{U}.wav             (mono, FLOAT, sample_rate Hz)
    <media>/manifest.csv                                       (one row per utterance)

Frame times: frame ``k`` of ``K`` sits at ``(k + 0.5) / K`` of the (possibly cut) duration,
i.e. 1/6, 1/2, 5/6 for K=3: evenly spaced, the centre frame included for every odd K. For an
even K the grid of K+1 is used without its last point, so the centre is still included.
Frames are scaled to fit and padded with black (letterbox): nothing is cropped.

Statuses: ``ok``; ``too_long`` (cut at ``max_seconds``; outputs written); ``no_audio`` (frames
only); ``no_video`` (wav only); ``corrupt`` (cannot be opened/decoded; nothing written);
``missing`` (no file); ``text_only`` (the descriptor has no clips folder for the split).

Re-runs: each clip's outcome is recorded in ``<media>/.state/<split>/<clip>.json`` together
with a fingerprint of the extract params and the SHA-256 of the source file's bytes (never its
path or mtime, so a ``dvc checkout`` of ``data/raw`` or another checkout redoes nothing), written
after its outputs. A later run skips every clip whose fingerprint matches and whose outputs exist,
so an interrupted run only does the remaining clips and a repeated run decodes nothing.

Bytes: PNGs, the wavs (a fixed 58-byte RIFF header written here: libsndfile adds a PEAK chunk
with a timestamp to float wavs), the state records and the manifest depend only on the source
bytes and the params, so two runs in two folders give the same ``data/media`` hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hlm12erc.config import ExtractParams, resolve_jobs
from hlm12erc.data import meld
from hlm12erc.workers import pool as die_with_parent_pool

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("source_split", "clip_id", "dialogue", "sequence", "status", "duration",
                    "frames_dir", "wav", "fingerprint")
STATUSES = ("ok", "too_long", "no_audio", "no_video", "corrupt", "missing", "text_only")
WITH_FRAMES = ("ok", "too_long", "no_audio")
WITH_AUDIO = ("ok", "too_long", "no_video")
SEEK_GAP_S = 4.0  # seek instead of decoding forward when the next frame is this far ahead
STATE_DIR = ".state"


@dataclass(frozen=True)
class Job:
    """One utterance to extract (picklable for the process pool)."""

    source_split: str
    clip_id: str
    dialogue: int
    sequence: int
    src: str | None  # None: the split has no clips folder (text_only)
    media: str  # output root


def frame_times(duration: float, k: int) -> list[float]:
    """K evenly spaced times over ``duration``, the centre included (see module doc)."""
    n = k if k % 2 == 1 else k + 1
    return [duration * (i + 0.5) / n for i in range(n)][:k]


def letterbox(rgb: np.ndarray, size: int) -> np.ndarray:
    """Fit ``rgb`` into a black ``size`` x ``size`` square, aspect ratio kept, nothing cropped."""
    import cv2

    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = rgb
    return out


def _fit(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(params: ExtractParams, src: str | None) -> str:
    """Extract params + the source's content hash: a change of either means the clip is redone.

    Content, not size/mtime: a ``dvc checkout`` or a fresh clone rewrites the files with new
    mtimes but the same bytes, and must not redo the extraction.
    """
    keys = {"frames": params.frames, "frame_size": params.frame_size,
            "sample_rate": params.sample_rate, "max_seconds": params.max_seconds, "v": 2}
    if src is None:
        keys["src"] = None
    else:
        try:
            keys["src"] = file_sha256(src)
        except OSError:
            keys["src"] = "absent"
    return hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- decoding

class _Corrupt(Exception):
    pass


def _duration(container: Any) -> float:
    if container.duration:
        return container.duration / 1_000_000
    best = 0.0
    for stream in container.streams:
        if stream.duration and stream.time_base:
            best = max(best, float(stream.duration * stream.time_base))
    return best


def _grab_frames(container: Any, times: list[float], size: int) -> list[np.ndarray]:
    """The first decoded frame at or after each time (seeking over long gaps), letterboxed."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    tb = float(stream.time_base)
    fps = float(stream.average_rate or 25)
    half = 0.5 / fps
    out: list[np.ndarray] = []
    decoded = None
    position = 0.0
    last = None
    for t in times:
        if decoded is None or t - position > SEEK_GAP_S:
            if decoded is not None or t > SEEK_GAP_S:
                container.seek(int(max(0.0, t - 1.0) / tb), stream=stream, backward=True)
            decoded = container.decode(stream)
        found = None
        for frame in decoded:
            if frame.pts is None:
                continue
            position = frame.pts * tb
            last = frame
            if position + half >= t:
                found = frame
                break
        found = found or last  # clip shorter than its header says: take the last frame
        if found is None:
            raise _Corrupt("no decodable video frame")
        w, h = _fit(found.width, found.height, size)
        rgb = found.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
        out.append(letterbox(rgb, size))
    return out


def _grab_audio(container: Any, rate: int, max_seconds: float) -> np.ndarray:
    """The first audio stream as mono float32 at ``rate`` Hz, cut at ``max_seconds``."""
    import av

    stream = container.streams.audio[0]
    container.seek(0)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    limit = int(round(max_seconds * rate))
    chunks: list[np.ndarray] = []
    total = 0
    for packet in container.demux(stream):
        for frame in packet.decode():
            for res in resampler.resample(frame):
                arr = res.to_ndarray().reshape(-1)
                chunks.append(arr)
                total += arr.size
        if total >= limit:
            break
    else:
        for res in resampler.resample(None):
            arr = res.to_ndarray().reshape(-1)
            chunks.append(arr)
            total += arr.size
    if not chunks:
        raise _Corrupt("no decodable audio")
    return np.concatenate(chunks)[:limit].astype(np.float32)


def decode_clip(src: str, params: ExtractParams) -> dict[str, Any]:
    """Decode one clip: ``{"status", "duration", "frames": [...] | None, "audio": array | None}``."""
    import av

    try:
        container = av.open(src)
    except (av.error.FFmpegError, OSError, ValueError):
        return {"status": "corrupt", "duration": float("nan"), "frames": None, "audio": None}
    with container:
        duration = _duration(container)
        has_video = bool(container.streams.video)
        has_audio = bool(container.streams.audio)
        if not has_video and not has_audio:
            return {"status": "corrupt", "duration": duration, "frames": None, "audio": None}
        span = min(duration, params.max_seconds) if duration > 0 else 0.0
        frames = audio = None
        try:
            if has_video:
                frames = _grab_frames(container, frame_times(span, params.frames), params.frame_size)
            if has_audio:
                audio = _grab_audio(container, params.sample_rate, params.max_seconds)
        except (_Corrupt, av.error.FFmpegError, ValueError, IndexError, MemoryError):
            return {"status": "corrupt", "duration": duration, "frames": None, "audio": None}
    if duration > params.max_seconds:
        status = "too_long"
    elif frames is None:
        status = "no_video"
    elif audio is None:
        status = "no_audio"
    else:
        status = "ok"
    return {"status": status, "duration": duration, "frames": frames, "audio": audio}


# ----------------------------------------------------------------------------- one clip

def _paths(job: Job) -> tuple[Path, Path, Path]:
    media = Path(job.media)
    return (media / "frames" / job.source_split / job.clip_id,
            media / "audio" / job.source_split / f"{job.clip_id}.wav",
            media / STATE_DIR / job.source_split / f"{job.clip_id}.json")


def _rel(path: Path, media: str) -> str:
    return path.relative_to(media).as_posix()


def _write_frames(frames: list[np.ndarray], dest: Path) -> None:
    import cv2

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for k, img in enumerate(frames):
        cv2.imwrite(str(tmp / f"{k}.png"), img[:, :, ::-1])
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    """A mono 32-bit float wav (WAVE_FORMAT_IEEE_FLOAT, ``fmt `` + ``fact`` + ``data``).

    Written by hand because libsndfile (soundfile) adds a PEAK chunk carrying the write time to
    every float wav, so the same samples would give different bytes on every run.
    """
    data = np.ascontiguousarray(audio, dtype="<f4").reshape(-1)
    payload = data.tobytes()
    fmt = struct.pack("<HHIIHHH", 3, 1, rate, rate * 4, 4, 32, 0)  # format 3 = IEEE float, cbSize 0
    chunks = (b"fmt " + struct.pack("<I", len(fmt)) + fmt
              + b"fact" + struct.pack("<II", 4, data.size)
              + b"data" + struct.pack("<I", len(payload)) + payload)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def _write_wav(audio: np.ndarray, rate: int, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp.wav"
    tmp.write_bytes(wav_bytes(audio, rate))
    os.replace(tmp, dest)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _done(job: Job, fp: str) -> dict[str, Any] | None:
    """The recorded result when this clip is already done with the same fingerprint."""
    frames_dir, wav, state = _paths(job)
    try:
        record = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != fp:
        return None
    if record["frames_dir"] and not frames_dir.is_dir():
        return None
    if record["wav"] and not wav.exists():
        return None
    return record


def extract_one(job: Job, params: ExtractParams) -> tuple[dict[str, Any], bool]:
    """Extract one utterance's media; returns (manifest row, whether any work was done)."""
    fp = fingerprint(params, job.src)
    base = {"source_split": job.source_split, "clip_id": job.clip_id, "dialogue": job.dialogue,
            "sequence": job.sequence}
    if job.src is None:
        return {**base, "status": "text_only", "duration": float("nan"), "frames_dir": "", "wav": "",
                "fingerprint": fp}, False
    record = _done(job, fp)
    if record is not None:
        return {**base, **{k: record[k] for k in ("status", "duration", "frames_dir", "wav")},
                "fingerprint": fp}, False
    frames_dir, wav, state = _paths(job)
    if not os.path.exists(job.src):
        result: dict[str, Any] = {"status": "missing", "duration": float("nan"), "frames": None, "audio": None}
    else:
        result = decode_clip(job.src, params)
    if result["frames"] is not None:
        _write_frames(result["frames"], frames_dir)
    else:
        _remove(frames_dir)
    if result["audio"] is not None:
        _write_wav(result["audio"], params.sample_rate, wav)
    else:
        _remove(wav)
    row = {**base, "status": result["status"],
           "duration": round(float(result["duration"]), 3) if result["duration"] == result["duration"] else None,
           "frames_dir": _rel(frames_dir, job.media) if result["frames"] is not None else "",
           "wav": _rel(wav, job.media) if result["audio"] is not None else "",
           "fingerprint": fp}
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_name(f".{state.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(row), encoding="utf-8")
    os.replace(tmp, state)
    return row, True


def _extract_star(args: tuple[Job, ExtractParams]) -> tuple[dict[str, Any], bool]:
    return extract_one(*args)


# ----------------------------------------------------------------------------- the stage

def jobs_from_descriptor(descriptor: dict[str, Any], media_dir: str | os.PathLike[str]) -> list[Job]:
    """One job per CSV row of every split in the descriptor."""
    media = str(Path(media_dir).resolve())
    jobs: list[Job] = []
    for split, entry in descriptor["splits"].items():
        frame = meld.read_meld_csv(entry["csv"])
        clips = entry.get("clips")
        seen: set[str] = set()
        for dia, utt in zip(frame["Dialogue_ID"], frame["Utterance_ID"]):
            cid = meld.clip_id(dia, utt)
            if cid in seen:
                continue
            seen.add(cid)
            src = os.path.join(clips, f"{cid}.mp4") if clips else None
            jobs.append(Job(split, cid, int(dia), int(utt), src, media))
    return jobs


def run_extract(descriptor: dict[str, Any], media_dir: str | os.PathLike[str], params: ExtractParams,
                progress: bool = True, jobs: int = 0) -> tuple[pd.DataFrame, int]:
    """Extract every utterance's media over ``jobs`` processes (0 = all cores); writes and returns the manifest.

    Returns ``(manifest, n_processed)`` where ``n_processed`` counts clips actually worked on
    (0 on a repeated run with the same params and sources).
    """
    media = Path(media_dir)
    media.mkdir(parents=True, exist_ok=True)
    rows, worked = _run(jobs_from_descriptor(descriptor, media), params, resolve_jobs(jobs), progress)
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    write_manifest(manifest, media)
    return manifest, worked


def _run(jobs: list[Job], params: ExtractParams, workers: int, progress: bool) -> tuple[list[dict], int]:
    from tqdm import tqdm

    todo = [(job, params) for job in jobs]
    bar = tqdm(total=len(todo), desc="extract", unit="clip", disable=not progress, leave=False)
    results: list[tuple[dict, bool]] = []
    workers = min(workers, max(1, len(todo)))
    if workers == 1:
        for item in todo:
            results.append(_extract_star(item))
            bar.update()
    else:
        with die_with_parent_pool(workers) as pool:
            for res in pool.map(_extract_star, todo, chunksize=max(1, min(16, len(todo) // (workers * 8)))):
                results.append(res)
                bar.update()
    bar.close()
    return [r for r, _ in results], sum(w for _, w in results)


def write_manifest(manifest: pd.DataFrame, media_dir: str | os.PathLike[str]) -> Path:
    path = Path(media_dir) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    manifest.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)
    return path


def read_manifest(media_dir: str | os.PathLike[str]) -> pd.DataFrame:
    path = Path(media_dir) / MANIFEST
    if not path.exists():
        raise meld.DataError(f"{path} not found; run the extract stage first (`dvc repro extract`)")
    frame = pd.read_csv(path, dtype={"frames_dir": str, "wav": str, "clip_id": str,
                                     "source_split": str, "status": str}, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS[:8] if c not in frame.columns]
    if missing:
        raise meld.DataError(f"{path}: not an extract manifest, missing column(s) {missing}; "
                             f"re-run `dvc repro extract`")
    return frame


def summarise(manifest: pd.DataFrame) -> str:
    """Counts per status, per source split, as a few printable lines."""
    lines = []
    for split, part in manifest.groupby("source_split", sort=False):
        counts = Counter(part["status"])
        lines.append(f"  {split:5s} {len(part):6d} clips: " +
                     ", ".join(f"{s}={counts[s]}" for s in STATUSES if counts[s]))
    total = Counter(manifest["status"])
    lines.append(f"  all   {len(manifest):6d} clips: " +
                 ", ".join(f"{s}={total[s]}" for s in STATUSES if total[s]))
    return "\n".join(lines)


def extract_clips(paths: Iterable[str], out_dir: str | os.PathLike[str], params: ExtractParams,
                  split: str = "bench", progress: bool = False, jobs: int = 0) -> tuple[list[dict], int]:
    """Extract arbitrary clip files (benchmarks, ad-hoc use) into ``out_dir``."""
    media = str(Path(out_dir).resolve())
    todo = [Job(split, Path(p).stem, i, 0, str(p), media) for i, p in enumerate(paths)]
    return _run(todo, params, resolve_jobs(jobs), progress)


__all__ = ["Job", "frame_times", "letterbox", "decode_clip", "extract_one", "run_extract", "wav_bytes",
           "read_manifest", "write_manifest", "summarise", "extract_clips", "fingerprint",
           "MANIFEST_COLUMNS", "STATUSES", "WITH_FRAMES", "WITH_AUDIO"]
