"""Fixtures that start real servers: a vLLM (CPU) server serving LoRA adapters that our own
training code made, and the gateway in front of it.

The chain, built once per module:

    samples (training/samples) -> build_tiny_base -> train_lora x2 -> vLLM --lora-modules -> gateway

vLLM runs from its own virtual environment (``.venv-vllm``, made by ``.ci/install-vllm.sh``;
``VLLM_PYTHON`` points elsewhere). Without it the tests fail and say how to install it, unless
``ORACLE_COUNCIL_SKIP_VLLM=1`` asks to skip them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serving import RunningGateway, free_port, serve

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO_ROOT / "training" / "samples"
DEFAULT_VLLM_PYTHON = ".venv-vllm/bin/python"
SKIP_ENV = "ORACLE_COUNCIL_SKIP_VLLM"

BASE_NAME = "tiny-base"          # vLLM's --served-model-name for the base model
ADAPTERS = ("euclid-asm", "seph-tilesmith")  # adapter names in vLLM = model names in the gateway
START_TIMEOUT = 180.0            # seconds for vLLM to answer GET /v1/models (it needs 25-40 s here)
STOP_TIMEOUT = 20.0              # seconds between SIGTERM and SIGKILL at teardown


# -- the vLLM interpreter --------------------------------------------------------------------------

def vllm_python() -> Path:
    """``$VLLM_PYTHON`` (default ``.venv-vllm/bin/python``), relative paths taken from the repo root.

    Not ``resolve()``d: a venv's python is a symlink, and following it would leave the venv.
    """
    path = Path(os.environ.get("VLLM_PYTHON") or DEFAULT_VLLM_PYTHON).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def find_vllm_problem(python: Path) -> str | None:
    """Why ``python`` cannot run vLLM, or None when it can (a quick check: vllm is importable)."""
    if not python.exists():
        return f"no vLLM interpreter at {python}"
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; raise SystemExit(u.find_spec('vllm') is None)"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        detail = probe.stderr.strip()[-300:]
        return f"{python} cannot import vllm" + (f": {detail}" if detail else "")
    return None


@pytest.fixture(scope="module")
def vllm_interpreter() -> Path:
    """The vLLM venv's python. Missing, the tests fail with what to do, unless skipping is asked for."""
    python = vllm_python()
    problem = find_vllm_problem(python)
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1" + (f" ({problem})" if problem else ": vLLM tests switched off"))
    if problem:
        pytest.fail(f"{problem}. Install vLLM's own venv with `.ci/install-vllm.sh` (about 2 minutes, "
                    f"needs PyPI), point VLLM_PYTHON at an interpreter that imports vllm, or set "
                    f"{SKIP_ENV}=1 to skip the vLLM tests.", pytrace=False)
    return python


# -- the model: tiny base + two adapters, from our own training code ------------------------------

TRAIN_SAMPLES = 8   # per adapter: its shortest samples, so that training takes seconds


@dataclass(frozen=True)
class TinyModels:
    base: Path
    adapters: dict[str, Path]   # adapter name -> peft folder
    prompts: dict[str, str]     # adapter name -> the user turn of one of its training samples
    replies: dict[str, str]     # adapter name -> that sample's reply, as trained on


def load_samples(name: str) -> list[dict]:
    """The shipped samples of one specialist: ``training/samples/<name>.jsonl``."""
    path = SAMPLES_DIR / f"{name}.jsonl"
    if not path.is_file():
        pytest.fail(f"no samples for {name!r}: {path} is missing", pytrace=False)
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def shortest(samples: list[dict], n: int) -> list[dict]:
    """The ``n`` shortest single-turn samples (instruction form, no system prompt)."""
    from training.lora import to_messages

    plain = [s for s in samples if "messages" not in s and not s.get("system")]
    if not plain:
        pytest.fail("no sample in instruction/input/output form without a system prompt", pytrace=False)
    return sorted(plain, key=lambda s: sum(len(m["content"]) for m in to_messages(s)))[:n]


def corpus(samples: list[dict]) -> list[str]:
    """Tokenizer training text: the chat roles and every message the samples are made of."""
    from training.lora import to_messages

    return ["system", "user", "assistant", *(m["content"] for s in samples for m in to_messages(s))]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads for a while. One thread trains this tiny model fastest on a busy
    2-core machine: two threads measured 2-8x slower per step while other processes competed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """A tiny base (tokenizer trained on every sample of both specialists) and two adapters, each
    trained on its own specialist's shortest samples until it reproduces them: its greedy answer to
    one of its prompts is then confident, and different from the other adapter's."""
    from training.lora import LoRATrainConfig, to_messages, train_lora
    from training.tiny import build_tiny_base

    root = tmp_path_factory.mktemp("vllm-models")
    per_adapter = {name: load_samples(name) for name in ADAPTERS}
    config = LoRATrainConfig(rank=8, alpha=16.0, dropout=0.0, learning_rate=1e-2, max_steps=40,
                             batch_size=TRAIN_SAMPLES, max_seq_len=128, seed=0, device="cpu")
    adapters, prompts, replies = {}, {}, {}
    with torch_threads(1):
        base = build_tiny_base(root / "base", corpus([s for rows in per_adapter.values() for s in rows]), seed=0)
        for name, rows in per_adapter.items():
            train = shortest(rows, TRAIN_SAMPLES)
            adapters[name] = train_lora(base, train, root / name, config, progress=False).out_dir
            user, reply = to_messages(train[0])
            prompts[name], replies[name] = user["content"], reply["content"]
    return TinyModels(base=base, adapters=adapters, prompts=prompts, replies=replies)


# -- the vLLM server ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class VLLMServer:
    url: str            # http://127.0.0.1:PORT
    base_model: str     # served name of the base model
    log: Path
    start_seconds: float

    @property
    def v1(self) -> str:
        return self.url + "/v1"


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {log}: {exc})"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (API server, engine core, workers: it is the group's
    leader), SIGKILL if it lingers, then SIGKILL to whatever of the group outlived the leader."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    signal_group(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        signal_group(signal.SIGKILL)
        proc.wait(10)
    signal_group(signal.SIGKILL)


@pytest.fixture(scope="module")
def vllm_server(vllm_interpreter: Path, tiny_models: TinyModels,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    with running_vllm(vllm_interpreter, tiny_models.base, tmp_path_factory.mktemp("vllm-run"),
                      [f"{n}={p}" for n, p in tiny_models.adapters.items()]) as server:
        yield server


@contextmanager
def running_vllm(python: Path, model: Path, workdir: Path, lora_modules: list[str],
                 max_lora_rank: int = 16) -> Iterator[VLLMServer]:
    """A vLLM server for ``model`` (served as ``BASE_NAME``) with ``--lora-modules`` entries
    (``name=path``), until the block ends; its log is ``workdir/vllm.log``."""
    log = workdir / "vllm.log"
    port = free_port()
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model), "--served-model-name", BASE_NAME,
           "--host", "127.0.0.1", "--port", str(port),
           "--enable-lora", "--lora-modules", *lora_modules,
           "--max-lora-rank", str(max_lora_rank), "--max-model-len", "512", "--dtype", "float32",
           # Every request computes its whole prompt: a repeated request then gives the same
           # floats, whatever the cache holds, and "gateway == direct" compares like with like.
           "--no-enable-prefix-caching"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with open(log, "wb") as out:
        # Its own session, so teardown can signal the engine processes it forks as well.
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_ready(proc, url, log, start)
        yield VLLMServer(url=url, base_model=BASE_NAME, log=log, start_seconds=time.monotonic() - start)
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, start: float) -> None:
    with httpx.Client(timeout=5.0) as client:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with status {proc.returncode} before it was ready; "
                            f"last lines of {log}:\n{_log_tail(log)}", pytrace=False)
            try:
                if client.get(url + "/v1/models").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() - start > START_TIMEOUT:
                pytest.fail(f"vLLM did not answer GET /v1/models within {START_TIMEOUT:.0f} s; "
                            f"last lines of {log}:\n{_log_tail(log)}", pytrace=False)
            time.sleep(0.5)


# -- the gateway in front of it ------------------------------------------------------------------------

def gateway_toml(vllm: VLLMServer) -> str:
    return f"""
[router]
default_model = "master-sword"

[[backends]]
name = "vllm"
kind = "openai"
base_url = "{vllm.v1}"
retries = 0
timeouts = {{ connect = 5, read = 60, total = 120 }}

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "vllm"
upstream_model = "euclid-asm"

[[models]]
name = "seph-tilesmith"
oracle = "oracle-din"
backend = "vllm"
upstream_model = "seph-tilesmith"

[[models]]
name = "master-sword"
oracle = "system"
backend = "vllm"
upstream_model = "{vllm.base_model}"
"""


@pytest.fixture(scope="module")
def gateway(vllm_server: VLLMServer) -> Iterator[RunningGateway]:
    with serve(gateway_toml(vllm_server)) as gw:
        yield gw
