"""Predict the emotions of a new conversation (CSV or JSON turns: speaker, text, optional clip, dialogue).

The turns become a 1NF table like the training tables, so the dialogue context and the
probabilities come from the same code as training and the evaluate stage; clips are decoded by
the extract stage's code. A turn whose clip is absent or fails to decode is predicted from the
modalities present (the ``used`` and ``media_status`` columns say so).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hlm12erc.config import ExtractParams
from hlm12erc.data.meld import DataError, normalize_text

REQUIRED_COLUMNS = ("speaker", "text")
OPTIONAL_COLUMNS = ("clip", "dialogue")
MEDIA_MODALITIES = ("audio", "visual")
DEFAULT_DIALOGUE = "0"


class PredictError(DataError):
    """Bad input for prediction; the message says what, why and how to fix it (one line)."""


def read_conversation(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A conversation file -> checked turns (clip paths resolved against the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: conversation file not found; pass a .csv or .json file with "
                           "columns speaker, text (optional clip, dialogue)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise PredictError(f"{path}: empty file; expected a header row with speaker,text "
                               "(optional clip, dialogue) and one row per turn") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise PredictError(f"{path}: not a readable CSV ({str(error).splitlines()[0]}); "
                               "save it as UTF-8 CSV with columns speaker,text") from None
    elif suffix == ".json":
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise PredictError(f"{path}: empty file; expected a JSON list of turns "
                               '[{"speaker": ..., "text": ...}] or {"turns": [...]}')
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise PredictError(f"{path}: invalid JSON ({error.msg} at line {error.lineno}); expected a list of "
                               'turns [{"speaker": ..., "text": ...}] or {"turns": [...]}') from None
        frame = turns_frame(raw, str(path))
    else:
        raise PredictError(f"{path}: unsupported file type '{suffix or '(none)'}'; use .csv or .json")
    return check_conversation(frame, str(path), base_dir=path.parent)


def turns_frame(raw: Any, source: str = "input") -> pd.DataFrame:
    """A JSON list of turn objects (or ``{"turns": [...]}``) -> a DataFrame."""
    if isinstance(raw, dict):
        if "turns" not in raw:
            raise PredictError(f"{source}: a JSON object needs a 'turns' list (found keys {sorted(raw)}); "
                               'write {"turns": [{"speaker": ..., "text": ...}, ...]}')
        raw = raw["turns"]
    if not isinstance(raw, list):
        raise PredictError(f"{source}: expected a list of turns, got {type(raw).__name__}; "
                           'write [{"speaker": ..., "text": ...}, ...]')
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise PredictError(f"{source}: turn {i + 1} is a {type(turn).__name__}, not an object; "
                               'write each turn as {"speaker": ..., "text": ...}')
    return pd.DataFrame([{str(k).strip().lower(): v for k, v in turn.items()} for turn in raw])


def _text_or_blank(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def check_conversation(frame: pd.DataFrame, source: str = "input",
                       base_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Validate the turns (column names case-insensitive); returns ``speaker, text, clip, dialogue``
    as strings, clips absolute."""
    if not isinstance(frame, pd.DataFrame):
        raise PredictError(f"{source}: expected a table of turns (pandas DataFrame), got {type(frame).__name__}")
    frame = frame.rename(columns={c: str(c).strip().lower() for c in frame.columns})
    duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise PredictError(f"{source}: column(s) {duplicated} given more than once (names are case-insensitive); "
                           "keep one of each")
    unknown = [c for c in frame.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise PredictError(f"{source}: unknown column(s) {unknown}; a turn has speaker, text and optionally "
                           f"clip, dialogue: rename or drop the others")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise PredictError(f"{source}: missing column(s) {missing} (found {list(frame.columns)}); every turn "
                           "needs speaker and text")
    if len(frame) == 0:
        raise PredictError(f"{source}: no turns; add at least one row with speaker and text")
    base = (Path(base_dir) if base_dir is not None else Path.cwd()).resolve()
    out = pd.DataFrame({
        "speaker": [_text_or_blank(v) for v in frame["speaker"]],
        "text": [_text_or_blank(v) for v in frame["text"]],
        "clip": "",
        "dialogue": [_text_or_blank(v) or DEFAULT_DIALOGUE for v in frame["dialogue"]] if "dialogue" in frame.columns
        else DEFAULT_DIALOGUE,
    })
    if "clip" in frame.columns:
        clips = []
        for i, value in enumerate(frame["clip"]):
            value = _text_or_blank(value)
            if value:
                clip = Path(value).expanduser()
                clip = clip if clip.is_absolute() else base / clip
                if not clip.is_file() or not os.access(clip, os.R_OK):
                    why = ("is not readable" if clip.is_file() else
                           "is not a file" if clip.exists() else "does not exist")
                    raise PredictError(f"{source}: turn {i + 1}: clip {value} {why} (resolved to {clip}); "
                                       "fix the path (relative paths are relative to the conversation file) "
                                       "or leave the clip cell empty")
                value = str(clip.resolve())
            clips.append(value)
        out["clip"] = clips
    return out


def conversation_table(turns: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Checked turns -> 1NF table rows (media empty; ``sequence`` = order within its dialogue)."""
    placeholder = "neutral" if "neutral" in labels else labels[0]
    return pd.DataFrame({
        "split": "predict",
        "source_split": "predict",
        "dialogue": turns["dialogue"].astype(str).to_numpy(),
        "sequence": turns.groupby("dialogue", sort=False).cumcount().to_numpy(),
        "clip_id": [f"turn{i}" for i in range(len(turns))],
        "speaker": turns["speaker"].map(normalize_text).to_numpy(),
        "x_text": turns["text"].map(normalize_text).to_numpy(),
        "x_text_raw": turns["text"].to_numpy(),
        "x_visual": "",
        "x_audio": "",
        "label": placeholder,
        "sentiment": "",
        "media_status": ["no_clip" if not c else "pending" for c in turns["clip"]],
    })


def extract_media(table: pd.DataFrame, clips: list[str], media_dir: str | os.PathLike[str],
                  params: ExtractParams) -> pd.DataFrame:
    """Decode each row's clip into ``media_dir`` (frames + 16 kHz wav); fills x_visual/x_audio/media_status."""
    from hlm12erc import media

    root = str(Path(media_dir).resolve())
    table = table.copy()
    for row, clip in enumerate(clips):
        if not clip:
            continue
        job = media.Job("predict", table["clip_id"].iat[row], row, int(table["sequence"].iat[row]), clip, root)
        record, _ = media.extract_one(job, params)
        table.loc[table.index[row], "media_status"] = record["status"]
        table.loc[table.index[row], "x_visual"] = str(Path(root) / record["frames_dir"]) if record["frames_dir"] else ""
        table.loc[table.index[row], "x_audio"] = str(Path(root) / record["wav"]) if record["wav"] else ""
    return table


@dataclass
class Predictor:
    """A trained model folder (any objective: one :class:`~hlm12erc.models.erc.ErcModel`), ready to predict."""

    model_dir: Path
    model: Any  # ErcModel
    extract: ExtractParams
    device: str = "cpu"
    eval_batch_size: int = 256
    _featurizer: Any = None

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str], extract: ExtractParams | None = None,
             device: str = "cpu", eval_batch_size: int = 256) -> Predictor:
        from hlm12erc.models.erc import ErcModel

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            why = "does not exist" if not model_dir.exists() else "has no config.json"
            raise PredictError(f"model folder {model_dir} {why}; train it first (`dvc repro headline` "
                               "writes models/headline) or pass --model DIR / --model-uri models:/hlm12erc/1")
        try:
            model = ErcModel.load(model_dir, device)
        except (KeyError, TypeError, RuntimeError, ValueError, FileNotFoundError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise PredictError(f"{model_dir}: not a model folder this version can read ({first}); "
                               "retrain it (`dvc repro`)") from None
        return cls(model_dir, model, extract or ExtractParams(), device, eval_batch_size)

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    @property
    def modalities(self) -> list[str]:
        return self.model.modalities

    @property
    def needs_media(self) -> bool:
        return any(m in self.modalities for m in MEDIA_MODALITIES)

    def predict(self, conversation: pd.DataFrame, base_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
        """Turns (speaker, text, optional clip/dialogue) -> one prediction row per turn."""
        with tempfile.TemporaryDirectory(prefix="hlm12erc-predict-") as media_dir:
            return self.predict_with_media(conversation, media_dir, base_dir)[0]

    def predict_with_media(self, conversation: pd.DataFrame, media_dir: str | os.PathLike[str],
                           base_dir: str | os.PathLike[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """:meth:`predict`, decoding the clips into ``media_dir``; also returns the 1NF table (row per turn)
        whose ``x_visual``/``x_audio`` point there (``predict --out page.html`` shows those frames and wavs)."""
        turns = check_conversation(conversation, "conversation", base_dir)
        table = conversation_table(turns, self.labels)
        if self.needs_media:
            table = extract_media(table, turns["clip"].tolist(), media_dir, self.extract)
        else:
            table["media_status"] = ["no_clip" if not c else "not_used" for c in turns["clip"]]
        probs, mask = self._probabilities(table)
        return self._result(turns, table, probs, mask), table

    def _probabilities(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(N, labels) probabilities and the (N, modalities) present-mask, in table order; the same
        featurizer settings and the same ``predict_proba`` as the evaluate stage."""
        from hlm12erc.config import ConfigError, params_from_dict
        from hlm12erc.features.featurize import Featurizer
        from hlm12erc.features.store import MODALITIES

        features = None
        if self.model.uses_cached_features:
            if self._featurizer is None:
                feature_params = params_from_dict({"features": self.model.meta.get("features") or {}}).features
                self._featurizer = Featurizer(feature_params, progress=False)
            features = self._featurizer(table)
        try:
            probs = self.model.predict_proba(table, features, batch_size=self.eval_batch_size, device=self.device)
        except ConfigError as error:
            raise PredictError(f"{self.model_dir} on this conversation: {error}") from None
        text_present = np.array([bool(str(t).strip()) for t in table["x_text"]], dtype=bool)
        columns = [features.mask[:, MODALITIES.index(m)] if features is not None and m != "text" else text_present
                   for m in self.modalities]
        return probs, np.stack(columns, axis=1)

    def _result(self, turns: pd.DataFrame, table: pd.DataFrame, probs: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
        result = pd.DataFrame({"dialogue": turns["dialogue"].to_numpy(),
                               "turn": table["sequence"].to_numpy() + 1,
                               "speaker": turns["speaker"].to_numpy(),
                               "text": turns["text"].to_numpy(),
                               "predicted": [self.labels[i] for i in probs.argmax(1)]})
        for i, label in enumerate(self.labels):
            result[f"p_{label}"] = np.round(probs[:, i].astype(float), 6)
        result["used"] = ["+".join(m for m, present in zip(self.modalities, row) if present) or "none"
                          for row in mask]
        result["media_status"] = table["media_status"].to_numpy()
        return result


MEDIA_REASONS = {"no_clip": "no clip given", "not_used": "clip not read", "corrupt": "clip failed to decode",
                 "missing": "clip not found", "no_audio": "clip has no audio", "no_video": "clip has no video",
                 "too_long": "clip too long"}
NOTE_EXAMPLES = 3


def fallback_note(result: pd.DataFrame, modalities: list[str], verbose: bool = False) -> str | None:
    """One line per reason for the turns predicted without some of the model's modalities, or None;
    a few example turns each (a long text-only file would name all), ``verbose`` names every turn."""
    full = "+".join(modalities)
    short = result[result["used"] != full]
    if short.empty:
        return None
    lines = []
    for (status, used), group in short.groupby(["media_status", "used"], sort=False):
        turns = [f"dialogue {d} turn {t}" for d, t in zip(group["dialogue"], group["turn"])]
        shown = turns if verbose else turns[:NOTE_EXAMPLES]
        rest = "" if len(shown) == len(turns) else f" and {len(turns) - len(shown)} more"
        only = "none of them" if used == "none" else f"{used} only"
        lines.append(f"note: {len(group)} of {len(result)} turn(s) used {only}, not {full} "
                     f"({status}: {MEDIA_REASONS.get(status, status)}): {', '.join(shown)}{rest}")
    if not verbose and len(short) > NOTE_EXAMPLES:
        lines[-1] += "; the used and media_status columns give every turn (--verbose lists them here)"
    return "\n".join(lines)


def format_result(result: pd.DataFrame, width: int = 40) -> str:
    """The prediction table as aligned text (long texts cut to ``width`` characters)."""
    shown = result.copy()
    shown["text"] = [t if len(t) <= width else t[: width - 3] + "..." for t in shown["text"]]
    for column in [c for c in shown.columns if c.startswith("p_")]:
        shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    return shown.to_string(index=False)


def write_result(result: pd.DataFrame, out: str | os.PathLike[str]) -> Path:
    """Write ``result`` as CSV or JSON (records), chosen by the suffix of ``out``."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise PredictError(f"--out {out}: unsupported suffix '{suffix or '(none)'}'; use .csv or .json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        result.to_csv(out, index=False)
    else:
        out.write_text(json.dumps(result.to_dict(orient="records"), indent=2) + "\n", encoding="utf-8")
    return out
