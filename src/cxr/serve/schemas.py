"""The API's JSON shapes, declared once. The OpenAPI document (`cxr.serve.openapi`) takes its
component schemas from these models, and the front end's TypeScript types
(web/src/api-schema.ts) are generated from that document (`make api-types`); tests fail when
either generated file is stale, and every real response in the tests is validated against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

DataUrl = str  # "data:image/png;base64,..." or "data:image/jpeg;base64,..."


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OodResult(_Shape):
    """The input checks' verdict on one image."""

    checked: bool
    ok: bool | None = None
    score: float | None = None
    threshold: float | None = None
    reason: str | None = None
    action: Literal["warn", "refuse"] | None = None
    checks: dict[str, dict[str, Any]] | None = Field(
        None, description="every check's score, limit and verdict"
    )


class Error(_Shape):
    error: str = Field(description="what is wrong and what to do about it")
    code: str = Field(examples=["unreadable_image", "not_a_chest_xray"])
    status: int
    ood: OodResult | None = None


class Health(_Shape):
    status: Literal["ok"]
    model_loaded: bool
    model: str
    version: str
    uptime_s: float | None = None
    notice: str


Interval = list[float]  # [low, high]


class FindingMetrics(_Shape):
    auroc: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    n_positive: int | None = None
    n_negative: int | None = None
    auroc_ci: Interval | None = Field(
        None, description="[low, high] 95% interval; null: not computed or not estimable"
    )
    sensitivity_ci: Interval | None = None
    specificity_ci: Interval | None = None


class IntervalsInfo(_Shape):
    """How the intervals were made (null on runs trained before they were computed)."""

    method: str = Field(examples=["patient bootstrap"])
    n_boot: int | None = None
    level: float = Field(description="coverage, e.g. 0.95")


class MetricsSummary(_Shape):
    n_images: int | None = None
    mean_auroc: float | None = None
    accuracy: float | None = None
    intervals: IntervalsInfo | None = Field(None, description="null: intervals not computed")
    per_finding: dict[str, FindingMetrics]


class Metrics(_Shape):
    validation: MetricsSummary | None = None
    test: MetricsSummary | None = None


class ModelCard(_Shape):
    intended_use: str
    not_for: str
    training_data: str
    limitations: str


class OperatingPoint(_Shape):
    """A finding's validation operating points: the served threshold and the borderline band."""

    threshold: float
    low: float
    high: float
    band_source: str
    auroc: float | None = None
    reliable: bool


class TrainingData(BaseModel):
    """What the run was trained on (no server path is ever included)."""

    model_config = ConfigDict(extra="allow")

    source: str | None = None
    n_train: int | None = None
    n_val: int | None = None


class OodGateInfo(_Shape):
    enabled: bool
    note: str


class Decision(_Shape):
    """The one rule that makes every call of the run (cxr.decision)."""

    rule: Literal["per_finding", "binary", "argmax"]
    text: str
    thresholds: dict[str, float]
    positive_class: str | None = Field(None, description="binary: the class called at threshold")
    threshold: float | None = Field(None, description="binary: P(positive_class) >= threshold")


class ModelInfo(_Shape):
    name: str
    version: str
    arch: str
    task: Literal["multilabel", "multiclass"]
    findings: list[str] = Field(min_length=1)
    thresholds: dict[str, float]
    threshold_method: str | None = None
    decision: Decision | None = None
    image_size: int
    preprocess: dict[str, Any]
    training_data: TrainingData
    best_epoch: int | None = None
    metrics: Metrics
    ood_gate: OodGateInfo
    calibration: dict[str, Any] | None = None
    operating_points: dict[str, OperatingPoint] | None = Field(
        None, description="per finding: threshold, borderline band, validation AUROC, reliable"
    )
    reliable_auroc: float | None = Field(
        None, description="findings with validation AUROC at or below this are unreliable"
    )
    model_card: ModelCard
    notice: str


class Finding(_Shape):
    finding: str
    probability: float = Field(ge=0, le=1)
    threshold: float
    positive: bool = Field(description="called by the run's decision rule (see decision)")
    call: Literal["positive", "possible", "negative"] | None = Field(
        None, description="possible: inside the borderline band (see band)"
    )
    margin: float | None = Field(None, description="probability - threshold")
    band: list[float] | None = Field(
        None,
        description="[low, high]: validation sensitivity-0.95 to specificity-0.95 thresholds "
        "(low == high when the run has no operating points)",
    )
    auroc: float | None = Field(None, description="validation AUROC; null: not estimable")
    reliable: bool | None = Field(None, description="validation AUROC > 0.6")


class DisplayImage(_Shape):
    """The lossless display image, fetched separately (GET url) so the answer stays small."""

    url: str = Field(description="/api/display/<id>: an unguessable id, held in memory only")
    expires_s: int = Field(description="seconds the server keeps it; then 404 display_expired")
    depth: Literal[8, 16] = Field(description="bits per pixel of the grey PNG")
    width: int
    height: int
    bytes: int


class ImageInfo(_Shape):
    width: int
    height: int
    display_width: int = Field(description="size of the display image (`display`)")
    display_height: int
    original: DataUrl | None = Field(
        None, description="the upload, grey, 8-bit JPEG preview (at most 768 px a side)"
    )
    preview_width: int | None = Field(None, description="size of `original`")
    preview_height: int | None = None
    preprocessed: DataUrl | None = Field(
        None, description="what the model saw (CLAHE): PNG up to 128 px a side, JPEG above"
    )
    depth: Literal[8, 16] | None = Field(None, description="bits per pixel of `display`")
    display: DisplayImage | None = Field(
        None,
        description="the lossless 8- or 16-bit PNG for window/level (query depth=16 keeps a "
        "DICOM's or 16-bit PNG's depth); null when too large to hold or for batch answers",
    )


class DicomHeader(_Shape):
    """Technical DICOM header fields; never an identifier."""

    modality: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    rows: int | None = None
    columns: int | None = None
    bits_stored: int | None = None
    bits_allocated: int | None = None
    photometric_interpretation: str | None = None
    transfer_syntax: str | None = None


class Prediction(_Shape):
    file: str
    findings: list[Finding] = Field(description="highest probability first")
    top_finding: str = Field(
        description="the called class of a single-label model; the most probable finding otherwise"
    )
    decision: str | None = Field(
        None,
        description="the rule that made the calls, e.g. 'PNEUMONIA when P(PNEUMONIA) >= 0.43, "
        "otherwise NORMAL'",
    )
    image: ImageInfo
    heatmap_method: Literal["gradcam"] | None = None
    heatmap_layer: Literal["last", "finer"] | None = None
    heatmap_grid: int | None = Field(
        None, description="cells a side of the Grad-CAM layer: the maps' true resolution"
    )
    heatmap_notes: dict[str, str] | None = Field(
        None, description="finding -> why its map shows nothing useful (empty, identical)"
    )
    heatmaps: dict[str, DataUrl] = Field(
        description="finding -> RGBA PNG (Grad-CAM colours, opacity following the map) of the "
        "original's aspect ratio, 4 px per Grad-CAM cell (64 to 256 px a side): stretch it "
        "over `original`"
    )
    overlays: dict[str, DataUrl] | None = None
    dicom: DicomHeader | None = None
    ood: OodResult
    seconds: float = Field(description="server time for this image")
    timing: dict[str, float]
    warnings: list[str] | None = None
    notice: str


class BatchError(_Shape):
    file: str
    error: str
    code: str
    status: int
    ood: OodResult | None = None


class BatchResult(_Shape):
    results: list[Prediction | BatchError]
    n_ok: int
    n_failed: int
    seconds: float
    notice: str


RESPONSES: tuple[type[BaseModel], ...] = (Error, Health, ModelInfo, Prediction, BatchResult)


def component_schemas() -> dict[str, dict]:
    """JSON Schema (2020-12, what OpenAPI 3.1 uses) of every response shape, by name."""
    _, top = models_json_schema(
        [(model, "validation") for model in RESPONSES],
        ref_template="#/components/schemas/{model}",
    )
    return top["$defs"]
