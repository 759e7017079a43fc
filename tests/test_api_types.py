"""The API's shapes are declared once (cxr.serve.schemas): the committed OpenAPI document and the
front end's TypeScript types generated from it must be what `make api-types` makes now."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cxr.serve.openapi import openapi_spec, write_document

WEB = Path(__file__).resolve().parents[1] / "web"
STALE = "stale: run `make api-types` and commit web/openapi.json and web/src/api-schema.ts"


def test_committed_openapi_document_is_the_generated_one(tmp_path):
    write_document(tmp_path / "openapi.json")
    assert json.loads((WEB / "openapi.json").read_text()) == openapi_spec(), STALE
    assert (tmp_path / "openapi.json").read_text() == (WEB / "openapi.json").read_text(), STALE


def test_committed_typescript_types_are_generated_from_the_document(tmp_path):
    tool = WEB / "node_modules" / ".bin" / "openapi-typescript"
    if not tool.exists() or shutil.which("node") is None:
        pytest.skip("web/node_modules is not installed (make web installs it)")
    out = tmp_path / "api-schema.ts"
    done = subprocess.run(
        [str(tool), str(WEB / "openapi.json"), "-o", str(out), "--default-non-nullable", "false"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=WEB,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == (WEB / "src" / "api-schema.ts").read_text(), STALE


def test_every_response_shape_forbids_undeclared_fields():
    """So a field a handler adds without declaring it fails the response checks in the tests."""
    schemas = openapi_spec()["components"]["schemas"]
    open_ones = [name for name, s in schemas.items() if s.get("additionalProperties") is not False]
    assert open_ones == ["TrainingData"], open_ones  # run metadata: free-form by design
