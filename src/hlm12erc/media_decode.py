"""One clip -> K letterboxed RGB frames + mono float samples, decoded in-process with PyAV.

Frame ``k`` of ``K`` sits at ``(k + 0.5) / K`` of the (possibly cut) duration (1/6, 1/2, 5/6 for
K=3); an even K uses the grid of K+1 without its last point, so the centre frame is always included.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from hlm12erc.config import ExtractParams

SEEK_GAP_S = 4.0  # seek instead of decoding forward when the next frame is this far ahead


def frame_times(duration: float, k: int) -> list[float]:
    """K evenly spaced times over ``duration``, the centre included (see module doc)."""
    n = k if k % 2 == 1 else k + 1
    return [duration * (i + 0.5) / n for i in range(n)][:k]


def letterbox(rgb: np.ndarray, size: int) -> np.ndarray:
    """Fit ``rgb`` into a black ``size`` x ``size`` square, aspect ratio kept, nothing cropped."""
    import cv2

    h, w = rgb.shape[:2]
    nw, nh = _fit(w, h, size)
    if (nh, nw) != (h, w):
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = rgb
    return out


def _fit(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class _Corrupt(Exception):
    pass


def _duration(container: Any) -> float:
    if container.duration:
        return container.duration / 1_000_000
    return max([0.0] + [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base])


def _grab_frames(container: Any, times: list[float], size: int) -> list[np.ndarray]:
    """The first decoded frame at or after each time (seeking over long gaps), letterboxed."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    tb = float(stream.time_base)
    fps = float(stream.average_rate or 25)
    half = 0.5 / fps
    out: list[np.ndarray] = []
    decoded = last = None
    position = 0.0
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
                chunks.append(res.to_ndarray().reshape(-1))
                total += chunks[-1].size
        if total >= limit:
            break
    else:
        for res in resampler.resample(None):  # flush the resampler
            chunks.append(res.to_ndarray().reshape(-1))
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
        has_video, has_audio = bool(container.streams.video), bool(container.streams.audio)
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
    status = ("too_long" if duration > params.max_seconds else "no_video" if frames is None
              else "no_audio" if audio is None else "ok")
    return {"status": status, "duration": duration, "frames": frames, "audio": audio}


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    """A mono 32-bit float wav, by hand: libsndfile adds a PEAK chunk with the write time to every float wav,
    so the same samples would give different bytes on every run."""
    data = np.ascontiguousarray(audio, dtype="<f4").reshape(-1)
    payload = data.tobytes()
    fmt = struct.pack("<HHIIHHH", 3, 1, rate, rate * 4, 4, 32, 0)  # format 3 = IEEE float, cbSize 0
    chunks = (b"fmt " + struct.pack("<I", len(fmt)) + fmt
              + b"fact" + struct.pack("<II", 4, data.size)
              + b"data" + struct.pack("<I", len(payload)) + payload)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks
