"""Byte-reproducible data stages: same inputs and params, same bytes, in any folder and after a checkout.

These tests pin the causes one by one (wav headers, content fingerprints, relative descriptor, workers
dying with a killed stage); tests/test_e2e_dvc.py reproduces the committed dvc.lock in another folder.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hlm12erc import media, media_decode, page_media
from hlm12erc.config import DataParams, DemoParams, ExtractParams
from hlm12erc.data import sources

ROOT = Path(__file__).resolve().parents[1]


def test_wavs_have_no_timestamp_and_read_back_exactly(tmp_path) -> None:
    """The extract stage's 16 kHz float wavs and the pages' embedded 8 kHz 16-bit ones: the same bytes later."""
    import soundfile

    samples = np.random.default_rng(0).standard_normal(16_001).astype(np.float32)
    first = media_decode.wav_bytes(samples, 16_000)
    (tmp_path / "clip.wav").write_bytes(first)
    embedded = page_media.embedded_wav(tmp_path / "clip.wav")
    time.sleep(1.1)  # libsndfile's PEAK chunk carried the second of writing
    assert media_decode.wav_bytes(samples, 16_000) == first and b"PEAK" not in first
    read, rate = soundfile.read(io.BytesIO(first), dtype="float32")
    assert rate == 16_000 and np.array_equal(read, samples)
    assert soundfile.info(io.BytesIO(first)).subtype == "FLOAT"
    assert page_media.embedded_wav(tmp_path / "clip.wav") == embedded
    small = base64.b64decode(embedded.split(",", 1)[1])
    info = soundfile.info(io.BytesIO(small))
    assert (info.samplerate, info.subtype, info.frames) == (8000, "PCM_16", 8000) and b"PEAK" not in small


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_media_bytes_depend_on_content_not_on_folder_or_mtime(data_demo_corpus, tmp_path) -> None:
    root, _ = data_demo_corpus
    copy = tmp_path / "elsewhere" / "MELD.Raw"
    shutil.copytree(root, copy)  # new paths, new mtimes, same bytes
    params = ExtractParams(frame_size=112)
    one = {"source": "demo", **sources.detect_layout(root)}
    two = {"source": "demo", **sources.detect_layout(copy)}
    media.run_extract(one, tmp_path / "a" / "media", params, progress=False, jobs=2)
    media.run_extract(two, tmp_path / "b" / "media", params, progress=False, jobs=2)
    a, b = _files(tmp_path / "a" / "media"), _files(tmp_path / "b" / "media")
    assert a.keys() == b.keys() and any(k.endswith(".wav") for k in a)
    assert [k for k in a if a[k] != b[k]] == []
    for path in copy.rglob("*"):  # what `dvc checkout` does to data/raw: same bytes, new mtimes
        os.utime(path, (time.time() + 100, time.time() + 100))
    _, worked = media.run_extract(two, tmp_path / "b" / "media", params, progress=False, jobs=2)
    assert worked == 0
    victim = next(copy.rglob("dia0_utt0.mp4"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")  # changed content: redone
    _, worked = media.run_extract(two, tmp_path / "b" / "media", params, progress=False, jobs=2)
    assert worked == 1


def test_descriptor_has_no_absolute_path_and_still_resolves(tmp_path) -> None:
    params = DataParams(source="demo", demo=DemoParams(seed=5, dialogues={"train": 2, "dev": 1, "test": 1}))
    sources.download(params, tmp_path / "a" / "raw")
    text = (tmp_path / "a" / "raw" / sources.DESCRIPTOR).read_text()
    assert str(tmp_path) not in text and '"root": "MELD.Raw"' in text
    shutil.move(tmp_path / "a", tmp_path / "b")
    desc = sources.read_descriptor(tmp_path / "b" / "raw")
    assert Path(desc["splits"]["train"]["csv"]).is_file()
    assert desc["root"] == str((tmp_path / "b" / "raw" / "MELD.Raw").resolve())


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process parents from /proc")
def test_kill_9_of_the_extract_stage_takes_its_workers_along(data_demo_corpus, tmp_path) -> None:
    root, _ = data_demo_corpus
    sources.write_descriptor(tmp_path / "raw", {"source": "local", **sources.detect_layout(root)})
    env = os.environ | {"HLM12ERC_JOBS": "2", "PYTHONPATH": str(ROOT / "src")}
    stage = subprocess.Popen([sys.executable, str(ROOT / "pipeline" / "extract.py"), "--params",
                              str(ROOT / "params.yaml"), "--raw", str(tmp_path / "raw"), "--out",
                              str(tmp_path / "media"), "--no-progress"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and stage.poll() is None:
            time.sleep(0.05)
            workers = _children(stage.pid)
        assert len(workers) >= 2, "the extract stage never started its 2 workers"
    finally:
        os.kill(stage.pid, signal.SIGKILL)
        stage.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [w for w in workers if _running(w)] == []
