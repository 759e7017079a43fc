"""`cxr import-weights torchxrayvision:NAME`: a torchxrayvision model as a cxr run folder.

torchxrayvision (Cohen et al., MIDL 2022) publishes DenseNet-121 and ResNet-50 classifiers
trained on public chest X-ray sets (NIH ChestX-ray14, CheXpert, MIMIC-CXR, PadChest, RSNA...).
The run folder written here holds everything cxr needs to serve and evaluate one without
torchxrayvision installed:

- the weights as model.safetensors, in the "xrv-densenet121" / "xrv-resnet50" layouts of
  `cxr.models.xrv`; outputs torchxrayvision leaves unnamed ("": not trained for that weight
  set) are dropped, so the run's findings are the named ones, in torchxrayvision's order;
- its input contract as config.json's preprocess: centre crop on the short side and resize to
  the weights' resolution (XRayCenterCrop + XRayResizer), no CLAHE or filter, and the [-1024,
  1024] scale (`x / 255 * 2048 - 1024`: mean 0.5, std 1/2048);
- its `op_threshs` as the thresholds of the decision rule: torchxrayvision's `op_norm` maps
  each threshold to 0.5, so "p >= op_thresh" calls exactly what "op_norm(p) >= 0.5" calls (a
  finding without an operating point falls back to 0.5 and model.json says which);
- model.json's "pretrained_on": the data sets the weights were trained on (parsed from the
  weights' file name in torchxrayvision's own model table), which `cxr evaluate` and `cxr
  report` compare with the data they are given (`pretraining_overlap`).

torchxrayvision is needed at import time only (the `dev` extra: `pip install torchxrayvision`):
its model table gives the labels, thresholds and download address; its own constructor
downloads (or reads from its cache) the released file, which for the DenseNets is a pickled
torch module that only torchxrayvision's loader reads. A local state dict (`--weights-file`,
safetensors or a .pt read with weights_only=True) takes the same conversion path.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import torch

from cxr.checkpoint import save_weights, write_json
from cxr.config import DataConfig, ModelConfig, PreprocessConfig, RunConfig, save_config
from cxr.decision import decision_rule
from cxr.errors import ConfigError, CxrError, OfflineError
from cxr.models import build_model
from cxr.preprocess import XRV_MEAN, XRV_STD
from cxr.run import RunDir

__all__ = [
    "DATASETS",
    "import_torchxrayvision",
    "pretraining_overlap",
    "weights_datasets",
    "image_collections",
]

PREFIX = "torchxrayvision:"
REFERENCE = (
    "Cohen et al., TorchXRayVision: A library of chest X-ray datasets and models, MIDL 2022 "
    "(https://github.com/mlmed/torchxrayvision)"
)

# torchxrayvision's data set codes (its weight file names, e.g. "nih-pc-chex-mimic_ch-google-
# openi-kaggle-densenet121-..."): the data set, and the image collection its images come from.
# RSNA Pneumonia ("kaggle"), SIIM-ACR Pneumothorax and Google's relabelling all reuse NIH
# ChestX-ray14 images, so a model trained on any of them has seen NIH images.
DATASETS: dict[str, tuple[str, str]] = {
    "nih": ("NIH ChestX-ray14", "nih"),
    "pc": ("PadChest", "padchest"),
    "chex": ("CheXpert", "chexpert"),
    "mimic_ch": ("MIMIC-CXR (CheXpert labeller)", "mimic"),
    "mimic_nb": ("MIMIC-CXR (NegBio labeller)", "mimic"),
    "google": ("Google's NIH ChestX-ray14 relabelling", "nih"),
    "openi": ("OpenI (Indiana University)", "openi"),
    "kaggle": ("RSNA Pneumonia Challenge (NIH ChestX-ray14 images)", "nih"),
    "rsna": ("RSNA Pneumonia Challenge (NIH ChestX-ray14 images)", "nih"),
    "siim": ("SIIM-ACR Pneumothorax (NIH ChestX-ray14 images)", "nih"),
    "vin": ("VinDr-CXR", "vindr"),
}
# Words in a data path or format that name an image collection (for the overlap warning).
COLLECTION_WORDS: dict[str, tuple[str, ...]] = {
    "nih": ("nih", "chestx-ray14", "chestxray14", "chestx-ray8", "rsna", "siim"),
    "chexpert": ("chexpert",),
    "mimic": ("mimic",),
    "padchest": ("padchest",),
    "openi": ("openi", "open-i", "indiana"),
    "vindr": ("vindr",),
}
FAMILIES = {"densenet": "xrv-densenet121", "resnet50": "xrv-resnet50"}


def _xrv():
    try:
        import torchxrayvision
    except ImportError:
        raise ConfigError(
            "importing torchxrayvision weights needs the torchxrayvision package "
            "(`pip install torchxrayvision`, or `pip install -e .[dev]`); serving the imported "
            "run does not"
        ) from None
    return torchxrayvision


def _entry(name: str) -> dict:
    table = _xrv().models.model_urls
    if name not in table or not name.startswith(tuple(FAMILIES)):
        known = sorted(k for k in table if k.startswith(tuple(FAMILIES)))
        raise ConfigError(f"{PREFIX}{name}: unknown weights; choose one of {', '.join(known)}")
    return table[name]


def weights_datasets(name: str) -> list[dict]:
    """The data sets torchxrayvision's weights NAME were trained on, from its file name."""
    url = _entry(name)["weights_url"]
    stem = Path(url).name
    codes = []
    for part in re.split(r"-(?=[a-z])", stem):
        if part.startswith(("densenet", "resnet")):
            break
        codes.append(part)
    out = []
    for code in codes:
        full, collection = DATASETS.get(code, (code, code))
        out.append({"code": code, "name": full, "images": collection})
    return out


def image_collections(path: str, data_format: str = "auto") -> set[str]:
    """The public image collections a data path or format names ("nih", "chexpert", ...)."""
    text = f"{data_format} {path}".lower()
    return {c for c, words in COLLECTION_WORDS.items() if any(w in text for w in words)}


def pretraining_overlap(info: dict, data_path: str, data_format: str = "auto") -> str | None:
    """A warning when the run's model.json says its weights were pretrained on the collection
    the evaluation data comes from (its figures would be optimistic), else None."""
    datasets = (info.get("pretrained_on") or {}).get("datasets") or []
    seen = image_collections(data_path, data_format)
    hits = [d for d in datasets if d.get("images") in seen]
    if not hits:
        return None
    names = ", ".join(sorted({d["name"] for d in hits}))
    source = (info.get("pretrained_on") or {}).get("source", "its pretrained weights")
    return (
        f"the model ({source}) was pretrained on {names}; the evaluation data {data_path!r} "
        "looks like the same image collection, so these images may have been in its training "
        "set and the figures may be optimistic. Evaluate on data from another source."
    )


def import_torchxrayvision(
    spec: str,
    out: str | Path,
    weights_file: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> dict:
    """Write the run folder `out` for `spec` ("torchxrayvision:NAME"); returns its model.json.

    Order: everything that can fail without work fails first (the package, the name, the weights
    file or its download), then the folder is written.
    """
    if not spec.startswith(PREFIX):
        raise ConfigError(
            f"{spec!r}: expected torchxrayvision:NAME, e.g. {PREFIX}densenet121-res224-all"
        )
    name = spec[len(PREFIX) :]
    entry = _entry(name)
    out = Path(out)
    files = RunDir(out)
    if files.config.exists():
        raise CxrError(f"{out} already holds a run; choose another --out")
    if weights_file is not None:
        state, origin = _state_from_file(Path(weights_file)), {"file": str(weights_file)}
        origin["sha256"] = _sha256(Path(weights_file))
    else:
        state, origin = _state_from_torchxrayvision(name, cache_dir)

    family = FAMILIES["resnet50" if name.startswith("resnet50") else "densenet"]
    labels = [str(label) for label in entry["labels"]]
    keep = [i for i, label in enumerate(labels) if label]
    findings = [labels[i] for i in keep]
    size = int(entry.get("input_resolution", 224))
    preprocess = PreprocessConfig(
        image_size=size, resize="crop", clahe=False, filter="none", mean=XRV_MEAN, std=XRV_STD
    )
    model = build_model(ModelConfig(arch=family), len(findings), preprocess)
    _load_state(model, state, keep, family, weights_file or name)

    op = [float(t) for t in entry.get("op_threshs", [math.nan] * len(labels))]
    thresholds = {labels[i]: (op[i] if math.isfinite(op[i]) else 0.5) for i in keep}
    no_operating_point = [labels[i] for i in keep if not math.isfinite(op[i])]
    rule = decision_rule("multilabel", findings, [thresholds[f] for f in findings])
    datasets = weights_datasets(name)
    cfg = RunConfig(
        data=DataConfig(path=spec),
        preprocess=preprocess,
        model=ModelConfig(arch=family),
        out_dir=str(out),
    )
    info = {
        "findings": findings,
        "task": "multilabel",
        "thresholds": thresholds,
        "threshold_method": "torchxrayvision op_threshs (its operating points; op_norm maps each "
        "to 0.5)"
        + (
            f"; no operating point, 0.5 used: {', '.join(no_operating_point)}"
            if no_operating_point
            else ""
        ),
        "decision": rule.to_json(),
        "arch": family,
        "image_size": size,
        "best_epoch": None,
        "training_data": {
            "path": spec,
            "source": "torchxrayvision",
            "datasets": [d["name"] for d in datasets],
            "description": entry.get("description", ""),
        },
        "pretrained_on": {"source": spec, "datasets": datasets, "reference": REFERENCE},
        "imported_from": {
            "library": "torchxrayvision",
            "version": getattr(_xrv(), "__version__", "unknown"),
            "weights": name,
            "url": entry["weights_url"],
            "outputs": labels,
            "dropped_outputs": [i for i, label in enumerate(labels) if not label],
            "op_threshs": [None if not math.isfinite(t) else t for t in op],
        }
        | origin,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, files.config)
    save_weights(model, files.weights)
    write_json(files.model_json, info)
    # No image of the user's trained it: an empty split, so the leak guard of evaluate/report
    # has nothing to refuse (what torchxrayvision trained on is the overlap warning's business).
    files.split.write_text("key,patient_id,split\n")
    return info


def _state_from_torchxrayvision(name: str, cache_dir: str | Path | None) -> tuple[dict, dict]:
    """torchxrayvision's own loader: its cache, else its download (OfflineError if offline)."""
    xrv = _xrv()
    url = _entry(name)["weights_url"]
    folder = Path(cache_dir) if cache_dir is not None else Path(xrv.utils.get_cache_dir())
    local = folder.expanduser() / Path(url).name
    if not local.is_file():
        try:
            xrv.models.get_weights(name, cache_dir=str(folder))
        except Exception as exc:  # noqa: BLE001 - requests/urllib/socket errors: offline
            raise OfflineError(
                f"could not download torchxrayvision weights {name} ({exc.__class__.__name__}). "
                f'Without internet: on a connected machine run `python -c "import '
                f"torchxrayvision as xrv; xrv.models.get_model('{name}')\"` (or `wget {url}`), "
                f"copy the file to {local} here (or pass --cache-dir FOLDER holding it), and run "
                "this command again; a state dict works too, with --weights-file."
            ) from None
    net = xrv.models.get_model(name, cache_dir=str(folder))
    return net.state_dict(), {"file": str(local), "sha256": _sha256(local)}


def _state_from_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"--weights-file: not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickled module or a damaged file
        raise ConfigError(
            f"--weights-file {path}: not a state dict readable safely ({exc.__class__.__name__}); "
            "torchxrayvision's released DenseNet files are pickled modules: leave them in its "
            "cache folder (--cache-dir) instead"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--weights-file {path}: expected a state dict of tensors")
    return state


def _load_state(model, state: dict, keep: list[int], family: str, where) -> None:
    """torchxrayvision's state dict into the cxr model: op_threshs dropped, the head's rows of
    the named outputs kept, every other tensor by name (strict: a mismatch is an error)."""
    state = {k: v for k, v in state.items() if k != "op_threshs"}
    if family == "xrv-resnet50" and not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}  # its file: the inner ResNet's dict
    head = model.head_name
    for suffix in ("weight", "bias"):
        key = f"{head}.{suffix}"
        if key in state:
            state[key] = state[key][keep]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise ConfigError(
            f"{where}: not a torchxrayvision {family} state dict: {' '.join(first)}"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
