"""The gateway in front of a real vLLM (CPU) server serving two LoRA adapters that our own training
code made (fixtures in conftest.py). The official ``openai`` SDK is the judge on both sides: what
the gateway answers must be what vLLM answers when asked directly, and what vLLM answers must be
what transformers + peft generate in-process from the same adapter folders.

Run: ``pytest -m vllm`` (needs ``.venv-vllm``: ``.ci/install-vllm.sh``; about a minute, most of it
vLLM's start). ``ORACLE_COUNCIL_SKIP_VLLM=1`` skips these tests.
"""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.integration.conftest import ADAPTERS, TinyModels, VLLMServer
from tests.serving import RunningGateway

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_TOKENS = 24
GATEWAY_MODELS = {*ADAPTERS, "master-sword"}


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> OpenAI:
    return OpenAI(base_url=gateway.v1, api_key="not-needed", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def direct(vllm_server: VLLMServer) -> OpenAI:
    """vLLM itself, no gateway in between."""
    return OpenAI(base_url=vllm_server.v1, api_key="not-needed", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def prompt(tiny_models: TinyModels) -> str:
    """One prompt for every model: a euclid-asm training prompt."""
    return tiny_models.prompts["euclid-asm"]


def upstream_name(model: str, vllm: VLLMServer) -> str:
    return vllm.base_model if model == "master-sword" else model


def chat(client: OpenAI, model: str, prompt: str, **extra):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          temperature=0, max_tokens=MAX_TOKENS, **extra)


# -- (a) the model list --------------------------------------------------------------------------------

def test_models_lists_the_specialists_and_the_router(client: OpenAI, direct: OpenAI, vllm_server: VLLMServer):
    ids = {m.id for m in client.models.list()}
    assert ids == GATEWAY_MODELS | {"oracle-council"}
    # and vLLM really serves what the gateway points at: the base and both adapters
    assert {m.id for m in direct.models.list()} == {vllm_server.base_model, *ADAPTERS}


# -- (b) greedy chat: adapters differ, the gateway adds nothing ----------------------------------------

def test_adapters_answer_differently(client: OpenAI, prompt: str):
    answers = {m: chat(client, m, prompt).choices[0].message.content for m in ADAPTERS}
    assert all(answers.values()), answers
    assert answers["euclid-asm"] != answers["seph-tilesmith"], answers


@pytest.mark.parametrize("model", ADAPTERS)
def test_each_adapter_answers_from_its_own_training(client: OpenAI, tiny_models: TinyModels, model: str):
    """vLLM really applies the adapter: given a prompt it was trained on, it starts the reply it learnt."""
    answer = chat(client, model, tiny_models.prompts[model]).choices[0].message.content
    assert len(answer) >= 10 and tiny_models.replies[model].startswith(answer), (answer, tiny_models.replies[model])


@pytest.mark.parametrize("model", sorted(GATEWAY_MODELS))
def test_chat_equals_vllm_called_directly(client: OpenAI, direct: OpenAI, vllm_server: VLLMServer,
                                         prompt: str, model: str):
    via = chat(client, model, prompt)
    raw = chat(direct, upstream_name(model, vllm_server), prompt)
    assert via.model == model
    assert via.choices[0].message.content == raw.choices[0].message.content
    assert via.choices[0].finish_reason == raw.choices[0].finish_reason
    assert (via.usage.prompt_tokens, via.usage.completion_tokens) == \
           (raw.usage.prompt_tokens, raw.usage.completion_tokens)


# -- (c) streaming ------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ADAPTERS)
def test_stream_concatenates_to_the_plain_answer(client: OpenAI, tiny_models: TinyModels, model: str):
    prompt = tiny_models.prompts[model]
    plain = chat(client, model, prompt)
    chunks = list(chat(client, model, prompt, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert all(c.model == model for c in chunks)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and chunks[-1].usage is not None, "usage comes once, in the last chunk"
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == \
           (plain.usage.prompt_tokens, plain.usage.completion_tokens)


def test_stream_without_include_usage_has_no_usage(client: OpenAI, prompt: str):
    chunks = list(chat(client, "euclid-asm", prompt, stream=True))
    assert chunks and not any(c.usage for c in chunks)


# -- (d) the gateway's headers ---------------------------------------------------------------------------

def test_response_headers_name_model_backend_and_request(client: OpenAI, prompt: str):
    raw = client.chat.completions.with_raw_response.create(
        model="seph-tilesmith", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=4)
    assert raw.headers["x-oracle-model"] == "seph-tilesmith"
    assert raw.headers["x-oracle-backend"] == "vllm"
    assert raw.headers.get("x-request-id")
    assert raw.parse().choices[0].message.content is not None
    # a client's own request id comes back unchanged
    mine = client.chat.completions.with_raw_response.create(
        model="euclid-asm", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=4,
        extra_headers={"x-request-id": "vllm-test-0001"})
    assert mine.headers["x-request-id"] == "vllm-test-0001"
    assert mine.headers["x-oracle-model"] == "euclid-asm"


# -- (e) vLLM runs the adapter exactly as peft does ------------------------------------------------------

@pytest.mark.parametrize("model", ADAPTERS)
def test_vllm_matches_transformers_and_peft(direct: OpenAI, tiny_models: TinyModels, model: str):
    """Both sides run float32 and decode greedily, so the answers are expected to match token for
    token. The prompt is one the adapter was trained on: its reply is confident, which keeps the
    argmax far from the near-ties that a different summation order (vLLM's CPU kernels vs torch's)
    could flip. The whole text and the number of generated tokens are compared."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = tiny_models.prompts[model]
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.base)
    base = AutoModelForCausalLM.from_pretrained(tiny_models.base, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(tiny_models.adapters[model])).eval()
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = peft_model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    generated = out[0, inputs["input_ids"].shape[1]:].tolist()
    expected = tokenizer.decode(generated, skip_special_tokens=True)

    answer = chat(direct, model, prompt)
    assert answer.usage.prompt_tokens == inputs["input_ids"].shape[1]
    assert answer.choices[0].message.content == expected
    assert answer.usage.completion_tokens == len(generated)


# -- (f) the legacy completions API -------------------------------------------------------------------------

@pytest.mark.parametrize("model", ADAPTERS)
def test_completions_through_the_gateway(client: OpenAI, direct: OpenAI, tiny_models: TinyModels, model: str):
    prompt = tiny_models.prompts[model]
    # The ChatML text the chat template renders: a completion of it is the chat answer.
    text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    via = client.completions.create(model=model, prompt=text, temperature=0, max_tokens=MAX_TOKENS)
    raw = direct.completions.create(model=model, prompt=text, temperature=0, max_tokens=MAX_TOKENS)
    assert via.model == model
    assert via.choices[0].text == raw.choices[0].text
    assert via.choices[0].text == chat(client, model, prompt).choices[0].message.content
    streamed = client.completions.create(model=model, prompt=text, temperature=0, max_tokens=MAX_TOKENS,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == via.choices[0].text
