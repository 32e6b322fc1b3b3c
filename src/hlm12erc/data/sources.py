"""Where MELD comes from: ``demo`` | ``kaggle`` | ``local`` -> ``data/raw/meld.json``.

The descriptor ``meld.json`` is the only thing later stages read::

    {"source": "demo", "layout": "tarball" | "kaggle" | "csv_only",
     "root": "MELD.Raw", "root_base": "descriptor" | "cwd",
     "splits": {"train": {"csv": "train_sent_emo.csv", "clips": "train_splits" | null},
                "dev": {...}, "test": {...}}}          # test may be absent

No absolute path is written, so the same source gives the same bytes in any checkout.
``demo`` and ``kaggle`` write under the output folder; ``local`` only points at the user's folder
(it can be 10 GB). Layouts recognised up to a few levels deep:

* tarball: ``train_splits/``, ``dev_splits_complete/``, ``output_repeated_splits_test/`` + CSVs
* kaggle:  the same folders inside ``train/``, ``dev/``, ``test/`` (``MELD-RAW/MELD.Raw/...``)
* csv_only: ``*_sent_emo.csv`` without clip folders (text-only runs)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hlm12erc.config import DataParams
from hlm12erc.data.meld import CLIP_DIRS, DataError

DESCRIPTOR = "meld.json"
CSV_NAMES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
_MAX_DEPTH = 4

KAGGLE_HELP = (
    "Kaggle credentials not found or rejected: put your API token in ~/.kaggle/kaggle.json "
    "(or the folder named by KAGGLE_CONFIG_DIR), or set KAGGLE_USERNAME and KAGGLE_KEY, or "
    "KAGGLE_API_TOKEN (see https://www.kaggle.com/settings -> API); or run without Kaggle: "
    "`dvc exp run -S data.source=demo`, or `-S data.source=local -S data.local_path=/path/to/MELD.Raw`")


class SourceError(DataError):
    """The data source cannot be used; the message says why and how to fix it."""


def detect_layout(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Find MELD's CSVs and clip folders under ``root``; returns a descriptor (without source)."""
    root = Path(root).expanduser()
    if not str(root) or not root.exists():
        raise SourceError(f"MELD folder '{root}' does not exist; set data.local_path to a MELD.Raw "
                          f"folder (tarball or Kaggle layout, or just the *_sent_emo.csv files)")
    if not root.is_dir():
        raise SourceError(f"MELD path '{root}' is not a folder; point data.local_path at the folder "
                          f"holding train_sent_emo.csv")
    root = root.resolve()
    csvs: dict[str, Path] = {}
    clips: dict[str, Path] = {}
    for dirpath, dirnames, filenames in _walk(root):
        for split, name in CSV_NAMES.items():
            if name in filenames and split not in csvs:
                csvs[split] = dirpath / name
        for split, name in CLIP_DIRS.items():
            if name in dirnames and split not in clips:
                clips[split] = dirpath / name
    if not csvs:
        raise SourceError(f"no MELD CSVs (train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv) "
                          f"under '{root}'; point data.local_path at a MELD.Raw folder")
    if "train" not in csvs:
        raise SourceError(f"'{root}' has {sorted(csvs)} CSV(s) but no train_sent_emo.csv; "
                          f"the pipeline needs at least train (and dev or test)")
    layout = ("csv_only" if not clips else
              "kaggle" if all(clips[s].parent.name == s for s in clips) else "tarball")
    splits = {s: {"csv": str(csvs[s]), "clips": str(clips[s]) if s in clips else None}
              for s in ("train", "dev", "test") if s in csvs}
    return {"layout": layout, "root": str(root), "splits": splits}


def _walk(root: Path):
    """os.walk to a bounded depth, never listing the (huge) clip folders themselves."""
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        dirs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        files = {e.name for e in entries if e.is_file()}
        yield folder, dirs, files
        if depth < _MAX_DEPTH:
            stack.extend((folder / d, depth + 1) for d in reversed(dirs) if d not in CLIP_DIRS.values())


def describe(descriptor: dict[str, Any]) -> str:
    """One line such as ``local source: csv_only layout at /x (train, dev; no clips)``."""
    splits = descriptor["splits"]
    with_clips = [s for s in splits if splits[s]["clips"]]
    clips = "no clips" if not with_clips else f"clips for {', '.join(with_clips)}"
    return (f"{descriptor['source']} source: {descriptor['layout']} layout at {descriptor['root']} "
            f"({', '.join(splits)}; {clips})")


def write_descriptor(out_dir: str | os.PathLike[str], descriptor: dict[str, Any]) -> Path:
    """Write ``<out_dir>/meld.json``: ``root`` relative to it when the files live under it (demo, kaggle),
    else as given in ``data.local_path`` (``root_base: cwd``); split paths relative to ``root``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(descriptor["root"]).resolve()
    if root.is_relative_to(out.resolve()):
        stored_root, base = root.relative_to(out.resolve()).as_posix() or ".", "descriptor"
    else:
        stored_root, base = str(descriptor.get("root_given") or root), "cwd"

    def rel(path: str | None) -> str | None:
        return None if path is None else Path(os.path.relpath(path, root)).as_posix()

    stored = {k: v for k, v in descriptor.items() if k not in ("root", "root_given", "splits")}
    stored.update(root=stored_root, root_base=base,
                  splits={s: {"csv": rel(e["csv"]), "clips": rel(e["clips"])} for s, e in descriptor["splits"].items()})
    path = out / DESCRIPTOR
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_descriptor(raw_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``<raw_dir>/meld.json`` and check it; paths come back absolute and existing."""
    path = Path(raw_dir) / DESCRIPTOR
    if not path.exists():
        raise SourceError(f"{path} not found; run the download stage first (`dvc repro download`)")
    try:
        desc = json.loads(path.read_text(encoding="utf-8"))
        splits = desc["splits"]
        stored_root = desc["root"]
        if not isinstance(splits, dict) or not all(isinstance(e, dict) and "csv" in e for e in splits.values()):
            raise TypeError("splits must map each split to its csv and clips")
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{path} is not a MELD descriptor ({exc}); re-run `dvc repro download`") from None
    anchor = Path(raw_dir) if desc.pop("root_base", None) == "descriptor" else Path.cwd()
    root = (anchor / Path(stored_root).expanduser()).resolve()
    desc["root"] = str(root)
    desc["splits"] = {s: {"csv": str(root / e["csv"]), "clips": str(root / e["clips"]) if e.get("clips") else None}
                      for s, e in splits.items()}
    for split, entry in desc["splits"].items():
        if not Path(entry["csv"]).exists():
            raise SourceError(f"{path}: the {split} CSV {entry['csv']} is gone; re-run the download "
                              f"stage or fix data.local_path")
    return desc


def fetch_demo(out_dir: Path, params: DataParams) -> dict[str, Any]:
    from hlm12erc.data import demo

    root = out_dir / "MELD.Raw"
    if root.exists():
        shutil.rmtree(root)
    broken = demo.generate(root, seed=params.demo.seed, dialogues=params.demo.dialogues)
    return {"source": "demo", **detect_layout(root), "demo_broken": broken}


def fetch_local(params: DataParams) -> dict[str, Any]:
    if not str(params.local_path).strip():
        raise SourceError("data.source=local but data.local_path is empty; set it to a MELD.Raw folder, "
                          "e.g. `dvc exp run -S data.source=local -S data.local_path=/data/MELD.Raw`")
    return {"source": "local", **detect_layout(params.local_path), "root_given": str(params.local_path)}


def make_kaggle_api() -> Any:
    """An authenticated ``KaggleApi``, or a :class:`SourceError` saying how to add credentials (``import
    kaggle`` prints help and exits without them, so it is imported here, silenced)."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except (SystemExit, Exception):  # noqa: BLE001 - any failure means "no usable credentials"
        raise SourceError(KAGGLE_HELP) from None
    return api


def _wanted(name: str) -> bool:
    """Only the three CSVs and the clips of the three split folders are extracted."""
    parts = name.replace("\\", "/").split("/")
    base = parts[-1]
    return not base.startswith("._") and (base in CSV_NAMES.values() or (
        base.endswith(".mp4") and len(parts) >= 2 and parts[-2] in CLIP_DIRS.values()))


def safe_extract_zip(archive: str | os.PathLike[str], target: str | os.PathLike[str],
                     wanted: Callable[[str], bool] = _wanted) -> int:
    """Extract the ``wanted`` members of ``archive`` into ``target``; returns how many. Every member is
    checked before anything is written: one that would leave ``target`` (zip-slip) is a SourceError."""
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{archive}: not a readable zip ({exc}); delete it and download again") from None
    with zf:
        members = zf.infolist()
        for info in members:
            name = info.filename.replace("\\", "/")
            dest = (target / name).resolve()
            if name.startswith("/") or (len(name) > 1 and name[1] == ":") or not dest.is_relative_to(target):
                raise SourceError(f"{archive}: member '{info.filename}' would be written outside "
                                  f"{target} (zip-slip); refusing to extract this archive")
        count = 0
        for info in members:
            if info.is_dir() or not wanted(info.filename):
                continue
            dest = (target / info.filename.replace("\\", "/")).resolve()
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.part")
            try:
                with zf.open(info) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except BaseException as exc:
                tmp.unlink(missing_ok=True)  # nothing half-written is left behind
                if isinstance(exc, (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)):
                    raise SourceError(f"{archive}: member '{info.filename}' is damaged ({exc}); delete the "
                                      f"archive and download it again") from None
                raise
            os.replace(tmp, dest)
            count += 1
    return count


def fetch_kaggle(out_dir: Path, params: DataParams,
                 api_factory: Callable[[], Any] = make_kaggle_api) -> dict[str, Any]:
    """Download ``data.kaggle_dataset`` as a zip and extract what the pipeline needs."""
    api = api_factory()
    download = out_dir / ".download"
    download.mkdir(parents=True, exist_ok=True)
    try:
        api.dataset_download_files(params.kaggle_dataset, path=str(download), force=False,
                                   quiet=False, unzip=False)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - network/HTTP errors come in many types
        raise SourceError(f"Kaggle download of '{params.kaggle_dataset}' failed: {exc}; check the "
                          f"dataset name (data.kaggle_dataset), your network and credentials, or use "
                          f"data.source=local with a downloaded copy") from None
    zips = sorted(download.glob("*.zip"))
    if not zips:
        raise SourceError(f"Kaggle download of '{params.kaggle_dataset}' left no zip in {download}; "
                          f"check data.kaggle_dataset")
    extracted = out_dir / "kaggle"
    if extracted.exists():
        shutil.rmtree(extracted)
    for archive in zips:
        safe_extract_zip(archive, extracted)
    shutil.rmtree(download)  # the zip is ~10 GB: keep only what was extracted
    return {"source": "kaggle", "dataset": params.kaggle_dataset, **detect_layout(extracted)}


def download(params: DataParams, out_dir: str | os.PathLike[str],
             api_factory: Callable[[], Any] = make_kaggle_api) -> dict[str, Any]:
    """Run the configured source and write ``<out_dir>/meld.json``; returns the descriptor."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fetchers = {"demo": lambda: fetch_demo(out, params), "kaggle": lambda: fetch_kaggle(out, params, api_factory),
                "local": lambda: fetch_local(params)}
    if params.source not in fetchers:
        raise SourceError(f"data.source='{params.source}' is not one of demo, kaggle, local")
    desc = fetchers[params.source]()
    write_descriptor(out, desc)
    return desc
