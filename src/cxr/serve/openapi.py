"""The OpenAPI 3.1 description of the API, served at /api/openapi.json.

Written out by hand (it is small) rather than generated, and kept honest by tests/test_serve.py:
the spec must validate, name every route the app has, and every real response must validate
against the schema given here for it.
"""

from __future__ import annotations

import re

from cxr import NOT_A_MEDICAL_DEVICE, __version__
from cxr.inference.analysis import HEATMAP_CHOICES, HEATMAP_SPEC_CHARS

_NUM_OR_NULL = {"type": ["number", "null"]}
_DATA_URL = {"type": "string", "pattern": "^data:image/png;base64,"}


def _error(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(schema: str, description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_UPLOAD_ERRORS = {
    "400": _error("No file, or a bad parameter (the message names it)"),
    "413": _error("The upload or the image's pixel count is over the server's limit"),
    "422": _error(
        "Not a usable chest X-ray: not an image, a corrupt file or DICOM, a colour photograph, "
        "or rejected by the out-of-distribution gate (code says which)"
    ),
    "403": _error("A post from a page on another site (Origin / Sec-Fetch-Site)"),
    "500": _error("A server bug; the server keeps serving"),
    "503": {
        **_error("Busy: the model queue is full or the request's deadline passed; retry"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    },
}

_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "PNG, JPEG, BMP, TIFF or DICOM",
                    },
                },
                "required": ["file"],
            }
        },
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary", "minLength": 1},
        },
    },
}

_SCHEMAS: dict = {
    "Error": {
        "type": "object",
        "required": ["error", "code", "status"],
        "properties": {
            "error": {"type": "string", "description": "what is wrong and what to do about it"},
            "code": {"type": "string", "examples": ["unreadable_image", "not_a_chest_xray"]},
            "status": {"type": "integer"},
            "ood": {"$ref": "#/components/schemas/OodResult"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "model_loaded", "model", "version", "notice"],
        "properties": {
            "status": {"const": "ok"},
            "model_loaded": {"type": "boolean"},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "uptime_s": {"type": "number"},
            "notice": {"type": "string"},
        },
    },
    "FindingMetrics": {
        "type": "object",
        "properties": {
            "auroc": _NUM_OR_NULL,
            "sensitivity": _NUM_OR_NULL,
            "specificity": _NUM_OR_NULL,
            "n_positive": {"type": ["integer", "null"]},
        },
    },
    "MetricsSummary": {
        "type": ["object", "null"],
        "properties": {
            "n_images": {"type": ["integer", "null"]},
            "mean_auroc": _NUM_OR_NULL,
            "accuracy": _NUM_OR_NULL,
            "per_finding": {
                "type": "object",
                "additionalProperties": {"$ref": "#/components/schemas/FindingMetrics"},
            },
        },
    },
    "ModelInfo": {
        "type": "object",
        "required": [
            "name",
            "arch",
            "task",
            "findings",
            "thresholds",
            "image_size",
            "training_data",
            "metrics",
            "model_card",
            "notice",
        ],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "arch": {"type": "string"},
            "task": {"enum": ["multilabel", "multiclass"]},
            "findings": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "thresholds": {"type": "object", "additionalProperties": {"type": "number"}},
            "threshold_method": {"type": "string"},
            "image_size": {"type": "integer"},
            "preprocess": {"type": "object"},
            "training_data": {"type": "object"},
            "best_epoch": {"type": ["integer", "null"]},
            "metrics": {
                "type": "object",
                "properties": {
                    "validation": {"$ref": "#/components/schemas/MetricsSummary"},
                    "test": {"$ref": "#/components/schemas/MetricsSummary"},
                },
            },
            "ood_gate": {"type": "object"},
            "model_card": {
                "type": "object",
                "required": ["intended_use", "not_for", "training_data", "limitations"],
                "additionalProperties": {"type": "string"},
            },
            "notice": {"type": "string"},
        },
    },
    "Finding": {
        "type": "object",
        "required": ["finding", "probability", "threshold", "positive"],
        "properties": {
            "finding": {"type": "string"},
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "threshold": {"type": "number"},
            "positive": {"type": "boolean", "description": "probability >= threshold"},
            "call": {
                "enum": ["positive", "possible", "negative"],
                "description": "possible: inside the borderline band (see band)",
            },
            "margin": {"type": "number", "description": "probability - threshold"},
            "band": {
                "type": "array",
                "items": {"type": "number"},
                "description": "[low, high]: validation sensitivity-0.95 to specificity-0.95 "
                "thresholds (low == high when the run has no operating points)",
            },
            "auroc": {**_NUM_OR_NULL, "description": "validation AUROC; null: not estimable"},
            "reliable": {"type": "boolean", "description": "validation AUROC > 0.6"},
        },
    },
    "OodResult": {
        "type": "object",
        "required": ["checked"],
        "properties": {
            "checked": {"type": "boolean"},
            "ok": {"type": "boolean"},
            "score": _NUM_OR_NULL,
            "threshold": _NUM_OR_NULL,
            "reason": {"type": "string"},
        },
    },
    "Prediction": {
        "type": "object",
        "required": [
            "file",
            "findings",
            "top_finding",
            "image",
            "heatmaps",
            "ood",
            "seconds",
            "timing",
            "notice",
        ],
        "properties": {
            "file": {"type": "string"},
            "findings": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/Finding"},
                "description": "highest probability first",
            },
            "top_finding": {"type": "string"},
            "image": {
                "type": "object",
                "required": ["width", "height", "display_width", "display_height"],
                "properties": {
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                    "display_width": {"type": "integer"},
                    "display_height": {"type": "integer"},
                    "original": {**_DATA_URL, "description": "the upload, grey, display size"},
                    "preprocessed": {**_DATA_URL, "description": "what the model saw (CLAHE)"},
                    "depth": {"enum": [8, 16], "description": "bits per pixel of `original`"},
                },
            },
            "heatmap_method": {"const": "gradcam"},
            "heatmap_layer": {"enum": ["last", "finer"]},
            "heatmap_grid": {
                "type": ["integer", "null"],
                "description": "cells a side of the Grad-CAM layer: the maps' true resolution",
            },
            "heatmap_notes": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "finding -> why its map shows nothing useful (empty, identical)",
            },
            "dicom": {
                "type": ["object", "null"],
                "description": "technical DICOM header fields (no identifiers); null otherwise",
            },
            "heatmaps": {
                "type": "object",
                "description": (
                    "finding -> RGBA PNG (Grad-CAM colours, opacity following the map) of the "
                    "original's aspect ratio, at most 256 px a side: stretch it over `original`"
                ),
                "additionalProperties": _DATA_URL,
            },
            "overlays": {"type": "object", "additionalProperties": _DATA_URL},
            "ood": {"$ref": "#/components/schemas/OodResult"},
            "seconds": {"type": "number", "description": "server time for this image"},
            "timing": {"type": "object", "additionalProperties": {"type": "number"}},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "notice": {"type": "string"},
        },
    },
    "BatchItem": {
        "oneOf": [
            {"$ref": "#/components/schemas/Prediction"},
            {
                "type": "object",
                "required": ["file", "error", "code", "status"],
                "properties": {
                    "file": {"type": "string"},
                    "error": {"type": "string"},
                    "code": {"type": "string"},
                    "status": {"type": "integer"},
                    "ood": {"$ref": "#/components/schemas/OodResult"},
                },
            },
        ]
    },
    "BatchResult": {
        "type": "object",
        "required": ["results", "n_ok", "n_failed", "seconds", "notice"],
        "properties": {
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/BatchItem"}},
            "n_ok": {"type": "integer"},
            "n_failed": {"type": "integer"},
            "seconds": {"type": "number"},
            "notice": {"type": "string"},
        },
    },
}


def _query(name: str, description: str, schema: dict) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def heatmaps_pattern(findings: list[str]) -> dict:
    """`heatmaps`: one of HEATMAP_CHOICES, or finding names joined by commas (each once)."""
    if not findings:
        return {"maxLength": HEATMAP_SPEC_CHARS}
    name = "(" + "|".join(re.escape(f) for f in findings) + ")"
    choices = "|".join(HEATMAP_CHOICES)
    # empty means auto
    return {"pattern": f"^({choices}|{name}(,{name})*|)$", "maxLength": HEATMAP_SPEC_CHARS}


def openapi_spec(info: dict | None = None) -> dict:
    """The spec; with the served model's info, the findings are listed in the descriptions."""
    names = (info or {}).get("findings", [])
    findings = ", ".join(names) or "the model's findings"
    heatmaps = _query(
        "heatmaps",
        f"which findings get a Grad-CAM heatmap: {', '.join(HEATMAP_CHOICES)} (auto: the top "
        f"finding and every positive one), or comma-separated names from: {findings}",
        {"type": "string", "default": "auto", **heatmaps_pattern(names)},
    )
    images = _query(
        "images", "include the original and preprocessed PNGs", {"type": "boolean", "default": True}
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cxr chest X-ray classifier API",
            "version": __version__,
            "description": NOT_A_MEDICAL_DEVICE
            + " Uploads are processed in memory and not stored unless the server was started "
            "with --save-uploads.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": {
            "/api/health": {
                "get": {
                    "summary": "Liveness; answers without running the model",
                    "operationId": "health",
                    "responses": {"200": _json("Health", "The server is up, the model is loaded")},
                }
            },
            "/api/model": {
                "get": {
                    "summary": "Findings, thresholds, training data, metrics and model card",
                    "operationId": "model",
                    "responses": {"200": _json("ModelInfo", "The served model")},
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This description",
                    "operationId": "openapi",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1 document",
                            "content": {"application/json": {}},
                        }
                    },
                }
            },
            "/api/predict": {
                "post": {
                    "summary": "One image: per-finding probability, threshold, call, Grad-CAM",
                    "operationId": "predict",
                    "parameters": [
                        heatmaps,
                        images,
                        _query(
                            "overlays",
                            "also return server-blended overlays (explain.overlay)",
                            {"type": "boolean", "default": False},
                        ),
                        _query(
                            "depth",
                            "bits of the returned preview PNG: 16 keeps a DICOM's depth",
                            {"enum": [8, 16], "default": 8},
                        ),
                        _query(
                            "heatmap_layer",
                            "Grad-CAM layer: finer is twice as fine as last (ResNet layer3, 4)",
                            {"enum": ["last", "finer", "layer4", "layer3"], "default": "last"},
                        ),
                        _query(
                            "filename",
                            "name of a raw-body upload, for messages",
                            {"type": "string"},
                        ),
                    ],
                    "requestBody": _IMAGE_BODY,
                    "responses": {"200": _json("Prediction", "The prediction"), **_UPLOAD_ERRORS},
                }
            },
            "/api/predict/batch": {
                "post": {
                    "summary": "Many images (form field `files`, repeated); per-file errors inline",
                    "operationId": "predictBatch",
                    "parameters": [
                        {**heatmaps, "schema": {**heatmaps["schema"], "default": "none"}},
                        {**images, "schema": {"type": "boolean", "default": False}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "files": {
                                            "type": "array",
                                            "items": {"type": "string", "format": "binary"},
                                            "minItems": 1,
                                        }
                                    },
                                    "required": ["files"],
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("BatchResult", "One result or error per file, in order"),
                        **{k: _UPLOAD_ERRORS[k] for k in ("400", "403", "413", "500", "503")},
                    },
                }
            },
        },
        "components": {"schemas": _SCHEMAS},
    }
