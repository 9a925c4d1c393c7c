"""config/oracle-council.toml, the registry users copy: it validates and lists the whole plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import MASTER_SWORD, load_config

REFERENCE = Path(__file__).resolve().parents[1] / "config" / "oracle-council.toml"

PLAN = {
    "oracle-din": ["euclid-asm", "seph-tilesmith", "koume-compress", "kotake-decompress", "agahnim-patcher"],
    "oracle-nayru": ["nayru-lorekeeper", "impa-archivist", "kaepora-teacher"],
    "oracle-farore": ["farore-questweaver", "saria-voice", "zelda-scribe"],
    "system": [MASTER_SWORD],
    "future": ["fierce-deity"],
}
WAVE_1 = {"euclid-asm", "seph-tilesmith", MASTER_SWORD}
ASM_TASK_TYPES = {"asm_base", "asm_debug", "asm_optimize", "asm_hook", "asm_doc"}


@pytest.fixture(scope="module")
def config():
    return load_config(REFERENCE)


def test_every_model_of_the_plan_is_listed_under_its_oracle(config):
    for oracle, names in PLAN.items():
        for name in names:
            model = config.model(name)
            assert model is not None, f"{name} is missing from {REFERENCE.name}"
            assert model.oracle == oracle, name
            assert model.description, f"{name} has no description"
    assert {o.name for o in config.oracles} == {"oracle-din", "oracle-nayru", "oracle-farore"}


def test_wave_1_is_deployed_and_nothing_else(config):
    assert {m.name for m in config.deployed_models} == WAVE_1
    assert not config.model("fierce-deity").deployed
    for name in WAVE_1:
        assert config.model(name).system_prompt, f"deployed {name} has no system prompt"


def test_undeployed_models_reach_a_deployed_model(config):
    deployed = {m.name for m in config.deployed_models}
    for model in config.models:
        if not model.deployed:
            assert model.fallbacks, f"{model.name} names no fallback"
            assert deployed & set(model.fallbacks), f"{model.name}: no fallback of {model.fallbacks} is deployed"


def test_specialist_details(config):
    assert set(config.model("euclid-asm").task_types) == ASM_TASK_TYPES
    assert config.model("euclid-asm").base_model == "Qwen/Qwen2.5-Coder-1.5B"
    assert "Qwen2.5-Coder-32B" in config.model(MASTER_SWORD).base_model
    for name in ("kaepora-teacher", "nayru-lorekeeper", "farore-questweaver", "saria-voice"):
        assert "gemma-3-4b" in config.model(name).base_model.lower(), name
    assert config.default_model_name() == MASTER_SWORD
    assert config.router.policy == "embedding-first"


def test_backends_show_every_kind_that_runs_remotely(config):
    kinds = {b.name: b.kind for b in config.backends}
    assert kinds["vllm"] == "openai" and config.backend("vllm").base_url == "http://127.0.0.1:8001/v1"
    assert kinds["ollama"] == "ollama" and config.backend("ollama").base_url == "http://127.0.0.1:11434"
    assert kinds["cloud"] == "litellm" and config.backend("cloud").api_key.startswith("env:")
    euclid = [(d.backend, d.upstream_model) for d in config.model("euclid-asm").all_deployments()]
    assert euclid == [("vllm", "euclid-asm-qwen-coder-1.5b"), ("ollama", "euclid-asm:latest")]
    assert config.model(MASTER_SWORD).backend == "cloud"


def test_no_secret_is_written_in_the_file(config):
    keys = [b.api_key for b in config.backends if b.api_key] + list(config.server.api_keys)
    keys.append(config.router.gemini_api_key)
    assert all(k.startswith("env:") for k in keys if k)
