"""Stage ``extract``: every utterance's clip -> K letterboxed PNG frames + a 16 kHz mono float wav::

    <media>/frames/<source_split>/dia{D}_utt{U}/{0..K-1}.png   (frame_size x frame_size RGB)
    <media>/audio/<source_split>/dia{D}_utt{U}.wav             (mono, FLOAT, sample_rate Hz)
    <media>/manifest.csv                                       (one row per utterance)

Re-runs: each clip's outcome goes to ``<media>/.state/<split>/<clip>.json`` after its outputs,
with a fingerprint of the extract params and the source's bytes (not its path or mtime, so another
checkout redoes nothing); a clip whose fingerprint matches and whose outputs exist is skipped.
Outputs depend only on the source bytes and the params: two folders give the same hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hlm12erc.config import ExtractParams, resolve_jobs
from hlm12erc.data import meld
from hlm12erc.media_decode import decode_clip, wav_bytes
from hlm12erc.media_manifest import MANIFEST_COLUMNS, write_manifest
from hlm12erc.workers import pool as die_with_parent_pool

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


def file_sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fingerprint(params: ExtractParams, src: str | None) -> str:
    """Extract params + the source's content hash (a ``dvc checkout`` changes mtimes, not bytes)."""
    keys = {"frames": params.frames, "frame_size": params.frame_size,
            "sample_rate": params.sample_rate, "max_seconds": params.max_seconds, "v": 2}
    try:
        keys["src"] = None if src is None else file_sha256(src)
    except OSError:
        keys["src"] = "absent"
    return hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _paths(job: Job) -> tuple[Path, Path, Path]:
    media = Path(job.media)
    return (media / "frames" / job.source_split / job.clip_id,
            media / "audio" / job.source_split / f"{job.clip_id}.wav",
            media / STATE_DIR / job.source_split / f"{job.clip_id}.json")


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
    stale = (record.get("fingerprint") != fp or (record["frames_dir"] and not frames_dir.is_dir())
             or (record["wav"] and not wav.exists()))
    return None if stale else record


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
    result = (decode_clip(job.src, params) if os.path.exists(job.src)
              else {"status": "missing", "duration": float("nan"), "frames": None, "audio": None})
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
           "frames_dir": frames_dir.relative_to(job.media).as_posix() if result["frames"] is not None else "",
           "wav": wav.relative_to(job.media).as_posix() if result["audio"] is not None else "",
           "fingerprint": fp}
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_name(f".{state.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(row), encoding="utf-8")
    os.replace(tmp, state)
    return row, True


def jobs_from_descriptor(descriptor: dict[str, Any], media_dir: str | os.PathLike[str]) -> list[Job]:
    """One job per CSV row of every split in the descriptor."""
    media = str(Path(media_dir).resolve())
    jobs: list[Job] = []
    for split, entry in descriptor["splits"].items():
        frame = meld.read_meld_csv(entry["csv"])
        clips = entry.get("clips")
        for dia, utt in dict.fromkeys(zip(frame["Dialogue_ID"], frame["Utterance_ID"])):  # repeated rows: once
            cid = meld.clip_id(dia, utt)
            src = os.path.join(clips, f"{cid}.mp4") if clips else None
            jobs.append(Job(split, cid, int(dia), int(utt), src, media))
    return jobs


def run_extract(descriptor: dict[str, Any], media_dir: str | os.PathLike[str], params: ExtractParams,
                progress: bool = True, jobs: int = 0) -> tuple[pd.DataFrame, int]:
    """Extract every utterance's media over ``jobs`` processes (0 = all cores); writes the manifest and returns
    ``(manifest, clips worked on)`` (0 on a repeated run)."""
    media = Path(media_dir)
    media.mkdir(parents=True, exist_ok=True)
    rows, worked = _run(jobs_from_descriptor(descriptor, media), params, resolve_jobs(jobs), progress)
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    write_manifest(manifest, media)
    return manifest, worked


def _run(jobs: list[Job], params: ExtractParams, workers: int, progress: bool) -> tuple[list[dict], int]:
    from tqdm import tqdm

    workers = min(workers, max(1, len(jobs)))
    results: list[tuple[dict, bool]] = []
    with (tqdm(total=len(jobs), desc="extract", unit="clip", disable=not progress, leave=False) as bar,
          die_with_parent_pool(workers) if workers > 1 else contextlib.nullcontext() as pool):
        chunksize = max(1, min(16, len(jobs) // (workers * 8)))
        mapped = map if pool is None else partial(pool.map, chunksize=chunksize)
        for result in mapped(extract_one, jobs, repeat(params)):
            results.append(result)
            bar.update()
    return [r for r, _ in results], sum(w for _, w in results)


def extract_clips(paths: Iterable[str], out_dir: str | os.PathLike[str], params: ExtractParams,
                  split: str = "bench", progress: bool = False, jobs: int = 0) -> tuple[list[dict], int]:
    """Extract arbitrary clip files (benchmarks, ad-hoc use) into ``out_dir``."""
    media = str(Path(out_dir).resolve())
    todo = [Job(split, Path(p).stem, i, 0, str(p), media) for i, p in enumerate(paths)]
    return _run(todo, params, resolve_jobs(jobs), progress)
