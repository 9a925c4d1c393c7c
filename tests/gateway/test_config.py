"""The registry: validation errors name the file, the table and the key."""

from __future__ import annotations

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError

BASE = """
[[backends]]
name = "vllm"
kind = "openai"
base_url = "http://127.0.0.1:8001/v1"

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "vllm"
"""


def test_minimal_config_defaults():
    cfg = parse_config(BASE)
    m = cfg.model("euclid-asm")
    assert m.all_deployments()[0].upstream_model == "euclid-asm"
    assert cfg.default_model_name() == "euclid-asm"
    assert cfg.backend("vllm").timeouts.connect == 5.0


@pytest.mark.parametrize("text, expected", [
    (BASE.replace('backend = "vllm"', 'backend = "vlm"'),
     "f.toml: [[models]] (name = 'euclid-asm'), key 'backend': unknown backend 'vlm'; known: vllm"),
    (BASE.replace('kind = "openai"', 'kind = "openia"'),
     "f.toml: [[backends]] (name = 'vllm'), key 'kind': unknown kind 'openia'"),
    (BASE.replace('base_url = "http://127.0.0.1:8001/v1"', ''),
     "f.toml: [[backends]] (name = 'vllm'), key 'base_url': required for kind 'openai'"),
    (BASE + 'temprature = 0.2\n', "f.toml: [[models]] #1 (name = 'euclid-asm'), key 'temprature': unknown key"),
    (BASE.replace('oracle = "oracle-din"\n', ''), "f.toml: [[models]] #1 (name = 'euclid-asm'), key 'oracle': required key is missing"),
    (BASE + 'fallbacks = ["nope"]\n', "key 'fallbacks': unknown model 'nope'"),
    ('[router]\ndefault_model = "ghost"\n' + BASE, "[router], key 'default_model': 'ghost' is not a deployed model"),
    ('[server]\nport = "eighty"\n' + BASE, "f.toml: [server], key 'port':"),
    (BASE + BASE.split("[[models]]")[1].join(["[[models]]", ""]), "duplicate name"),
    (BASE.replace('name = "euclid-asm"', 'name = "oracle-council"'), "reserved"),
    ("[[models]\nname=1", "f.toml: invalid TOML"),
])
def test_errors_name_file_table_and_key(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="f.toml")
    assert expected in info.value.message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    p = tmp_path / "oc.toml"
    p.write_text(BASE)
    assert load_config(p).resolve_path("adapters/a") == str(tmp_path / "adapters/a")


def test_secrets_come_from_the_environment(monkeypatch):
    cfg = parse_config(BASE.replace('base_url', 'api_key = "env:OC_K"\nbase_url'))
    monkeypatch.delenv("OC_K", raising=False)
    assert cfg.backend("vllm").resolved_api_key() is None
    monkeypatch.setenv("OC_K", "s3cret")
    assert cfg.backend("vllm").resolved_api_key() == "s3cret"


def test_embedded_default_loads_and_is_offline():
    cfg = load_config(None)
    assert {m.name for m in cfg.deployed_models} >= {"euclid-asm", "seph-tilesmith", "master-sword"}
    assert {b.kind for b in cfg.backends} == {"local"}
