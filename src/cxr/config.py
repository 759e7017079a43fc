"""Typed configs for every stage. Saved beside each run so a run can be reproduced from its folder.

Pydantic (not loose dicts) so that a typo in a config file is an error that names the field,
before any image is decoded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cxr.errors import ConfigError


class StrictConfig(BaseModel):
    """The one base of every config: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


C = TypeVar("C", bound=StrictConfig)


class DataConfig(StrictConfig):
    """Where the images are and how they are split."""

    path: str = "synthetic"
    format: Literal["auto", "folder", "nih", "chexpert", "medmnist", "synthetic"] = "auto"
    uncertain: Literal["ignore", "ones", "zeros"] = Field(
        "ignore", description="CheXpert -1 labels: masked out of the loss, or mapped to 1 or 0"
    )
    medmnist_flag: str = "pneumoniamnist"
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="carved only when the data has no official test split"
    )
    val_source: Literal["auto", "fraction", "official"] = Field(
        "auto",
        description="validation images: 'fraction' (a patient-level split of train by "
        "val_fraction), 'official' (the dataset's val split), or 'auto' (official only when it "
        "holds >= 200 images and >= 5% of train); a run's config.json records which was used",
    )
    split_seed: int = 0
    split_file: str | None = Field(None, description="reuse the split of an earlier run")
    limit: int | None = Field(None, gt=0, description="use at most this many images (quick runs)")
    skip_bad: bool = False
    synthetic_count: int = Field(600, gt=0)


class PreprocessConfig(StrictConfig):
    """Deterministic preprocessing, shared by training, evaluation and serving.

    Its hash keys the on-disk cache, so every field here must change the output pixels, except
    `mean` and `std` (NORMALIZATION_FIELDS, left out of the cache key): they map the cached uint8
    pixels to the model's input, (x / 255 - mean) / std, so a run imported from another library
    (torchxrayvision wants [-1024, 1024]: mean 0.5, std 1/2048) serves with its own contract.
    """

    image_size: int = Field(224, ge=16, le=2048)
    resize: Literal["pad", "crop", "stretch"] = "pad"
    clahe: bool = True
    clahe_clip_limit: float = Field(2.0, gt=0.0)
    clahe_tile_grid: int = Field(8, ge=1, le=64)
    filter: Literal["none", "median", "gaussian", "bilateral", "unsharp"] = "none"
    filter_size: int = Field(3, ge=1, le=31, description="kernel size (odd) or sigma scale")
    # Last, so a default config's hash without them is the hash it had before they existed.
    mean: float = Field(0.5, description="model input = (pixels / 255 - mean) / std")
    std: float = Field(0.25, gt=0.0, description="0.25: [0, 1] -> about [-2, 2]")


# PreprocessConfig fields that do not change the cached pixels (not part of the cache key).
NORMALIZATION_FIELDS = frozenset({"mean", "std"})


# Magnitudes of the intensity and geometry jitter per `augment.preset`; "medium" is the long-
# standing default. A field set explicitly (not None) wins over its preset's value.
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "light": {
        "rotation_deg": 3.0,
        "translate": 0.02,
        "scale_min": 0.95,
        "brightness": 0.05,
        "contrast": 0.05,
        "gamma": 0.07,
        "noise_std": 0.01,
        "blur_prob": 0.05,
    },
    "medium": {
        "rotation_deg": 7.0,
        "translate": 0.05,
        "scale_min": 0.85,
        "brightness": 0.1,
        "contrast": 0.1,
        "gamma": 0.15,
        "noise_std": 0.02,
        "blur_prob": 0.1,
    },
    # other scanners and sites: wider exposure, contrast and gamma ranges, more blur and noise,
    # looser framing (MedMNIST-C's corruptions, at training time)
    "heavy": {
        "rotation_deg": 12.0,
        "translate": 0.08,
        "scale_min": 0.7,
        "brightness": 0.2,
        "contrast": 0.25,
        "gamma": 0.35,
        "noise_std": 0.04,
        "blur_prob": 0.3,
    },
}


class AugmentConfig(StrictConfig):
    """Training-only augmentation; `strength` scales every magnitude at once (for tuning).

    The jitter magnitudes come from `preset` unless set one by one (None: the preset's value);
    `resolved()` gives them as numbers. Mixup / CutMix mix pairs of images and their labels
    (soft targets); random erasing blanks one rectangle per image with probability erase_prob.
    """

    enabled: bool = True
    preset: Literal["light", "medium", "heavy"] = "medium"
    strength: float = Field(1.0, ge=0.0, le=3.0)
    rotation_deg: float | None = Field(None, ge=0.0)
    translate: float | None = Field(None, ge=0.0, lt=0.5)
    scale_min: float | None = Field(
        None, gt=0.0, le=1.0, description="random resized crop: min area"
    )
    brightness: float | None = Field(None, ge=0.0)
    contrast: float | None = Field(None, ge=0.0)
    gamma: float | None = Field(None, ge=0.0)
    noise_std: float | None = Field(None, ge=0.0)
    blur_prob: float | None = Field(None, ge=0.0, le=1.0)
    hflip: bool = Field(False, description="off by default: the heart is on one side")
    mixup_alpha: float = Field(0.0, ge=0.0, description="Beta(a, a) mixing weight; 0: off")
    cutmix_alpha: float = Field(0.0, ge=0.0, description="Beta(a, a) kept area; 0: off")
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="share of batches mixed")
    erase_prob: float = Field(0.0, ge=0.0, le=1.0, description="random erasing, per image")
    erase_area: tuple[float, float] = Field(
        (0.02, 0.2), description="random erasing: rectangle area as a share of the image"
    )

    @model_validator(mode="after")
    def _check_erase_area(self):
        lo, hi = self.erase_area
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"erase_area must be 0 < low <= high < 1, got {self.erase_area}")
        return self

    def resolved(self) -> AugmentConfig:
        """This config with every magnitude a number: the preset's where the field is None."""
        preset = AUGMENT_PRESETS[self.preset]
        return self.model_copy(update={k: v for k, v in preset.items() if getattr(self, k) is None})


class ModelConfig(StrictConfig):
    arch: str = Field(
        "resnet18",
        description="resnet18..resnet152, densenet121, efficientnet_b0, convnext_tiny (cxr.models)",
    )
    pretrained: str = Field(
        "none",
        description="'none' (from scratch), 'imagenet' (torchvision download), a weights file, "
        "or a finished run folder (fine-tune it: new head, shared findings keep their rows)",
    )
    members: list[str] = Field(
        default_factory=list,
        description="arch 'ensemble' only: the member architectures, in order (`cxr ensemble`)",
    )


class TrainConfig(StrictConfig):
    epochs: int = Field(10, ge=1)
    val_bootstrap: int = Field(
        300, ge=0, description="patient-bootstrap resamples for validation CIs; 0: none"
    )
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(1e-4, ge=0.0)
    loss: Literal["auto", "bce", "weighted_bce", "focal", "ce"] = "auto"
    focal_gamma: float = Field(2.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    ema_decay: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="weight EMA per step (e.g. 0.999); validation and the "
        "saved weights use the averaged model; 0: off",
    )
    swa_epochs: int = Field(
        0,
        ge=0,
        description="SWA: average the weights of the last N epochs (BatchNorm "
        "statistics recomputed on the training images) and save that model; 0: off",
    )
    swa_lr: float | None = Field(
        None, gt=0.0, description="SWA: constant learning rate in its epochs (None: the schedule's)"
    )
    scheduler: Literal["cosine", "onecycle", "step", "plateau", "none"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0)
    step_size: int = Field(5, ge=1)
    step_gamma: float = Field(0.1, gt=0.0, le=1.0)
    early_stopping_patience: int = Field(5, ge=0, description="0 turns early stopping off")
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    threads: int | None = Field(None, ge=1)
    cache_dir: str = ".cache/cxr"
    compile: Literal["off", "on"] = Field(
        "off",
        description="torch.compile the training model (worth it on GPUs; minutes to "
        "compile on a CPU)",
    )
    progressive_start_size: int | None = Field(
        None,
        ge=16,
        description="progressive resizing: train the first epoch at this size "
        "(px), growing to preprocess.image_size; None turns it off",
    )
    progressive_fraction: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="progressive resizing: share of the epochs spent "
        "growing to the full size (the rest train at full size)",
    )
    log: Literal["none", "tensorboard", "mlflow"] = Field(
        "none", description="also log epochs to TensorBoard (RUN/tensorboard) or MLflow"
    )


class ServeConfig(StrictConfig):
    """How the API serves one run; every field has a `cxr serve` flag."""

    model: str = Field(description="run folder written by `cxr train`")
    device: str = "cpu"
    backend: Literal["torch", "onnx"] = Field(
        "torch", description="onnx: ONNX Runtime on RUN/model.onnx (`cxr export` first)"
    )
    max_upload_mb: float = Field(32.0, gt=0, description="largest accepted file")
    max_pixels: int = Field(40_000_000, gt=0, description="larger images are refused unread")
    max_batch_files: int = Field(32, ge=1)
    max_batch_mb: float = Field(128.0, gt=0, description="largest batch request")
    save_uploads: str | None = Field(None, description="folder to keep uploads in; off if None")
    web_dir: str | None = Field(None, description="built front end; None: web/dist if built")
    ood_gate: bool = Field(True, description="use the run's out-of-distribution gate, if any")
    colour_check: bool = True
    allow_modality: bool = Field(
        False, description="read DICOM CT, MR, US... (default: radiographs CR/DX/DR/RG/OT only)"
    )
    display_size: int = Field(1024, ge=64, le=4096, description="long side of returned images")
    save_uploads_max_mb: float = Field(1024.0, gt=0, description="--save-uploads folder cap")
    workers: int = Field(4, ge=1, description="requests in model work at once")
    queue: int = Field(16, ge=0, description="requests waiting for model work; more get 503")
    deadline_s: float = Field(60.0, gt=0, description="a request's time from arrival to answer")
    max_batch: int = Field(
        16, ge=1, le=256, description="concurrent requests one model call answers; 1: no batching"
    )
    batch_wait_ms: float = Field(
        5.0, ge=0, le=1000, description="how long a batch waits for more requests after its first"
    )
    allowed_hosts: tuple[str, ...] = Field(
        ("localhost", "127.0.0.1", "::1"), description="Host headers answered; '*' for any"
    )
    token_file: str | None = Field(None, description="bearer token for the API; off if None")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.max_batch_mb * 1024 * 1024)


class RunConfig(StrictConfig):
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    out_dir: str = "runs/latest"

    @model_validator(mode="after")
    def _progressive_below_full_size(self) -> RunConfig:
        start = self.train.progressive_start_size
        if start is not None and start > self.preprocess.image_size:
            raise ValueError(
                f"train.progressive_start_size {start} is larger than preprocess.image_size "
                f"{self.preprocess.image_size} (images are cached once, at the full size)"
            )
        return self


def load_config(path: str | Path) -> RunConfig:
    """Read a run config from JSON or YAML; unknown or invalid fields are named in the error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raw = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes a named error
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict, source: str = "config") -> RunConfig:
    return validated(RunConfig, raw, source)


def validated(kind: type[C], raw: C | dict, source: str) -> C:
    """`raw` as a `kind` config; a ConfigError naming each bad field otherwise."""
    if isinstance(raw, kind):
        return raw
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def serve_config(raw: ServeConfig | dict) -> ServeConfig:
    return validated(ServeConfig, raw, "serve config")


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        parts.append(f"field '{field}': {err['msg']}")
    return "; ".join(parts)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(cfg.model_dump_json(indent=2))


def config_hash(cfg: BaseModel, exclude: frozenset[str] = frozenset()) -> str:
    import hashlib

    return hashlib.sha256(cfg.model_dump_json(exclude=set(exclude)).encode()).hexdigest()[:16]
