"""Extraction throughput: PyAV in-process extraction vs one ffmpeg subprocess per output file.

    python benchmarks/extract_throughput.py [--clips 24] [--jobs 1 2] [--keep DIR]

Generates N MELD-like clips (1280x720 H.264 at 23.976 fps, ~3 s, 48 kHz stereo AAC) in a
temp dir, then times, for each job count:

* ``pyav``   hlm12erc.media (K letterboxed PNGs + 16 kHz mono wav per clip, process pool);
* ``naive``  K+1 ffmpeg subprocesses per clip (one per PNG, one for the wav), run in a thread
             pool of ``jobs`` workers (ffmpeg from PATH, else the imageio-ffmpeg binary);
* ``decode`` bare PyAV decode of every video and audio frame, no output (the ceiling).

Frames, size and wav rate are the ``extract`` params of params.yaml. Writes a markdown table:
method, jobs, clips/s, per-core clips/s, speed-up vs naive.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import common

from hlm12erc import media, media_decode
from hlm12erc.config import ExtractParams
from hlm12erc.data import demo


def make_clip(args: tuple[str, int]) -> str:
    path, seed = args
    labels = demo.LABELS
    demo.write_clip(path, labels[seed % 7], labels[(seed * 3) % 7], seconds=3.0 + (seed % 5) * 0.1,
                    seed=seed, size=(1280, 720), fps=24, audio_rate=48000, preset="veryfast")
    return path


def ffmpeg_exe() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        sys.exit("no ffmpeg on PATH and imageio-ffmpeg not installed: pip install imageio-ffmpeg")
    return imageio_ffmpeg.get_ffmpeg_exe()


def naive_clip(ffmpeg: str, clip: Path, out: Path, params) -> None:
    """What a notebook does: one ffmpeg call per frame (input seek) and one for the wav."""
    import av

    with av.open(str(clip)) as c:  # ffprobe-equivalent for the duration
        duration = c.duration / 1e6
    out.mkdir(parents=True, exist_ok=True)
    size = params.frame_size
    vf = (f"scale={size}:{size}:force_original_aspect_ratio=decrease,"
          f"pad={size}:{size}:(ow-iw)/2:(oh-ih)/2")
    for k, t in enumerate(media_decode.frame_times(min(duration, params.max_seconds), params.frames)):
        subprocess.run([ffmpeg, "-v", "error", "-y", "-ss", f"{t:.3f}", "-i", str(clip), "-frames:v", "1",
                        "-vf", vf, str(out / f"{k}.png")], check=True)
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(clip), "-vn", "-ac", "1", "-ar", str(params.sample_rate),
                    "-t", str(params.max_seconds), "-c:a", "pcm_f32le", str(out / "audio.wav")], check=True)


def bare_decode(path: str) -> int:
    import av

    n = 0
    with av.open(path) as c:
        for _ in c.decode(*c.streams):
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", help="write clips and outputs here instead of a temp dir")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="hlm12erc-bench-"))
    clips_dir = work / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    with common.timed() as made, ProcessPoolExecutor(max(args.jobs)) as pool:
        clips = list(pool.map(make_clip, [(str(clips_dir / f"dia{i}_utt0.mp4"), i) for i in range(args.clips)]))
    common.log(f"generated {len(clips)} clips (1280x720, ~3 s, 48 kHz stereo AAC) in {made.seconds:.1f}s")
    ffmpeg = ffmpeg_exe()
    rows = []
    for jobs in args.jobs:
        params = ExtractParams(frame_size=112)
        out = work / f"pyav-{jobs}"
        shutil.rmtree(out, ignore_errors=True)
        t_pyav = common.seconds_of(
            lambda out=out, params=params, jobs=jobs: media.extract_clips(clips, out, params, jobs=jobs))
        out = work / f"naive-{jobs}"
        shutil.rmtree(out, ignore_errors=True)
        with ThreadPoolExecutor(jobs) as pool:
            def naive(c: str, out: Path = out, params=params) -> None:
                naive_clip(ffmpeg, Path(c), out / Path(c).stem, params)

            t_naive = common.seconds_of(lambda pool=pool, naive=naive: list(pool.map(naive, clips)))
        if jobs == 1:
            t_decode = common.seconds_of(lambda: [bare_decode(c) for c in clips])
        else:
            with ProcessPoolExecutor(jobs) as pool:
                t_decode = common.seconds_of(lambda: list(pool.map(bare_decode, clips)))
        naive_rate = len(clips) / t_naive
        for name, seconds in (("naive ffmpeg subprocesses", t_naive), ("pyav (hlm12erc.media)", t_pyav),
                              ("bare PyAV decode (ceiling)", t_decode)):
            rate = len(clips) / seconds
            rows.append((name, jobs, rate, rate / jobs, rate / naive_rate))
    table = common.markdown_table(["method", "jobs", "clips/s", "per-core clips/s", "speed-up vs naive"],
                                  [[name, jobs, f"{rate:.1f}", f"{per_core:.1f}", f"{speedup:.2f}x"]
                                   for name, jobs, rate, per_core, speedup in rows])
    size = params.frame_size
    notes = (f"{len(clips)} generated clips; per clip {params.frames} frames at {size}x{size} and a "
             f"{params.sample_rate} Hz mono wav (the extract params of params.yaml).")
    common.write_page(__file__, "Extract throughput", table, notes)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
