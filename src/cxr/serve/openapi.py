"""The OpenAPI 3.1 description of the API, served at /api/openapi.json.

The response shapes come from the pydantic models of `cxr.serve.schemas` (declared once); the
paths, parameters and request bodies are described here. tests/test_serve.py checks that the
spec validates, names every route the app has, and that every real response validates against
its schema; `write_document` writes the generic document the front end's types are generated
from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cxr import NOT_A_MEDICAL_DEVICE, __version__
from cxr.inference.analysis import HEATMAP_CHOICES, HEATMAP_SPEC_CHARS
from cxr.serve.schemas import component_schemas

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
            "/api/display/{token}": {
                "get": {
                    "summary": "A prediction's lossless display image (image.display.url)",
                    "operationId": "display",
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "description": "the id in image.display.url",
                            "schema": {"type": "string", "maxLength": 64},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "grey PNG, 8 or 16 bits (image.display.depth)",
                            "content": {"image/png": {}},
                        },
                        "404": _error("Expired, evicted or never issued: analyse the file again"),
                    },
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
        "components": {"schemas": component_schemas()},
    }


def write_document(path: str | Path) -> None:
    """The model-independent document, from which the front end's types are generated
    (`make api-types`); tests/test_api_types.py fails when the committed copy is stale."""
    Path(path).write_text(json.dumps(openapi_spec(), indent=2) + "\n")
