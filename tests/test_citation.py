"""CITATION.cff is valid Citation File Format 1.2.0 and agrees with pyproject.toml.

tests/data/cff-schema-1.2.0.json is the official CFF 1.2.0 JSON schema, copied unchanged from
cffconvert/schemas/1.2.0/schema.json in the cffconvert 2.0.0 wheel on PyPI (sha256 0b8d2214...c169b);
cffconvert itself is not a dependency (it pins jsonschema<4, which JupyterLab cannot use).
"""

import copy
import datetime
import hashlib
import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(__file__).resolve().parent / "data" / "cff-schema-1.2.0.json"
SCHEMA_SHA256 = "0b8d22140da702d766df318dcff3a91af2f39521298dcf36d76315fd99cc169b"


def _as_json(value):
    # the schema asks tools to turn YAML dates into strings before validating
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def citation():
    return _as_json(yaml.safe_load((ROOT / "CITATION.cff").read_text()))


def _errors(validator, document):
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document)]


def test_schema_is_the_vendored_official_one():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert json.loads(SCHEMA.read_text())["$id"] == "https://citation-file-format.github.io/1.2.0/schema.json"


def test_citation_cff_is_valid(validator, citation):
    assert citation["cff-version"] == "1.2.0"
    assert _errors(validator, citation) == []


@pytest.mark.parametrize("key", ["message", "authors", "title", "cff-version"])
def test_missing_required_key_is_rejected(validator, citation, key):
    broken = copy.deepcopy(citation)
    del broken[key]
    assert any(key in error for error in _errors(validator, broken))


def test_invalid_values_are_rejected(validator, citation):
    bad_license = dict(copy.deepcopy(citation), license="MIT License")  # not an SPDX identifier
    unknown_key = dict(copy.deepcopy(citation), homepage="x")  # additionalProperties: false
    bad_type = copy.deepcopy(citation)
    bad_type["preferred-citation"]["type"] = "paper"  # not a CFF reference type
    for document in (bad_license, unknown_key, bad_type):
        assert _errors(validator, document)


def test_version_and_license_match_pyproject(citation):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert str(citation["version"]) == project["version"]
    assert citation["license"] == project["license"]["text"]


def test_license_file_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 hesslib contributors" in text


def test_preferred_citation_is_the_original_paper(citation):
    paper = citation["preferred-citation"]
    assert paper["type"] == "article"
    assert paper["year"] == 2025
    assert paper["title"] == "Neural Networks Loss Landscape Convergence in Hessian Low-Dimensional Space"
    assert [a["family-names"] for a in paper["authors"]] == ["Nikitin", "Kiselev", "Grabovoy", "Meshkov"]
