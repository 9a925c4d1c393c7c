"""The Gemini classifier: Gemini Flash through the official google-genai client.

One ``generateContent`` call per prompt, temperature 0, structured output: the response schema
(``RESPONSE_SCHEMA``) is the decision itself with the labels as enums, and the taxonomy is in the
system instruction. Everything that comes back is checked again here: malformed JSON, a label
outside the taxonomy, a task type that does not exist or an unknown oracle is an
``InvalidAnswer`` and is never passed on.

Time is bounded: ``timeout`` (default 2 s) is the budget of the whole classification,
retries included. 429 and 5xx answers and refused connections are retried (``retries`` extra
attempts, tenacity, random exponential backoff with jitter) while the budget lasts; anything
else fails at once. A circuit breaker opens after ``breaker_failures`` consecutive failures, so
while Gemini is down prompts go straight to the next classifier instead of waiting on it.
google-genai's own retries (and the silent reconnect-after-sleep of its aiohttp path) are
turned off: tenacity here is the only retry loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from tenacity import (AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay,
                      wait_random_exponential)

from router.base import Classifier, Scores
from router.breaker import CircuitBreaker
from router.errors import ClassifierFailed, ClassifierTimeout, ClassifierUnavailable, InvalidAnswer
from router.taxonomy import ASM_TASK_TYPES, MASTER_SWORD, ORACLE_NAMES, ROUTE_LABELS, describe

DEFAULT_MODEL = "gemini-2.5-flash"
MAX_PROMPT_CHARS = 4000

RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "OBJECT",
    "properties": {
        "specialist": {"type": "STRING", "enum": list(ROUTE_LABELS)},
        "task_type": {"type": "STRING", "enum": list(ASM_TASK_TYPES), "nullable": True},
        "cross_domain": {"type": "BOOLEAN"},
        "oracles": {"type": "ARRAY", "items": {"type": "STRING", "enum": list(ORACLE_NAMES)}},
        "confidence": {"type": "NUMBER"},
        "reason": {"type": "STRING"},
    },
    "required": ["specialist", "cross_domain", "confidence", "reason"],
}

INSTRUCTIONS = f"""You route prompts from Zelda: A Link to the Past ROM hackers to the specialist model that \
should answer. Answer with JSON only, following the schema.

The taxonomy:
{describe()}

Rules:
- specialist: exactly one label from the taxonomy.
- cross_domain: true only when the prompt needs specialists from two or more different oracles; then \
specialist is "{MASTER_SWORD}" and oracles lists them.
- task_type: only for euclid-asm, else null.
- confidence: your probability (0 to 1) that the specialist is right.
- reason: at most 15 words."""


def parse_answer(text: str | None) -> Scores:
    """Check Gemini's JSON answer against the taxonomy; ``InvalidAnswer`` if anything is off."""
    try:
        data = json.loads(text or "")
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"gemini answered malformed JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InvalidAnswer("gemini's answer is not a JSON object")
    label = data.get("specialist")
    if label not in ROUTE_LABELS:
        raise InvalidAnswer(f"gemini answered an unknown label {str(label)[:40]!r}")
    task = data.get("task_type")
    if task is not None and task not in ASM_TASK_TYPES:
        raise InvalidAnswer(f"gemini answered an unknown task type {str(task)[:40]!r}")
    oracles = data.get("oracles") or []
    if not isinstance(oracles, list) or any(o not in ORACLE_NAMES for o in oracles):
        raise InvalidAnswer(f"gemini answered unknown oracles {str(oracles)[:80]}")
    cross = data.get("cross_domain")
    confidence = data.get("confidence")
    if not isinstance(cross, bool) or not isinstance(confidence, (int, float)) or isinstance(confidence, bool):
        raise InvalidAnswer("gemini's answer lacks a boolean cross_domain or a numeric confidence")
    confidence = min(max(float(confidence), 0.0), 1.0) or 1e-6
    if cross:
        label = MASTER_SWORD
    reason = str(data.get("reason") or "")[:200]
    return Scores(labels={label: confidence}, oracles={o: 1.0 for o in oracles} if cross else {},
                  task_types={task: 1.0} if task and label == "euclid-asm" else {},
                  note=f"gemini: {reason}" if reason else "")


class GeminiClassifier(Classifier):
    name = "gemini"

    def __init__(self, api_key: str | None, *, model: str = DEFAULT_MODEL, timeout: float = 2.0, retries: int = 2,
                 base_url: str | None = None, breaker_failures: int = 3, breaker_reset: float = 30.0) -> None:
        if not api_key:
            raise ClassifierUnavailable("no Gemini API key (set GEMINI_API_KEY or [router].gemini_api_key)")
        try:
            from google import genai
            from google.genai import errors, types
        except ImportError as exc:
            raise ClassifierUnavailable(f"google-genai is not installed ({exc}); "
                                        "install the extra: pip install 'oracle-council[gemini]'") from None
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset)
        self._errors = errors
        http = types.HttpOptions(base_url=base_url, api_version="v1beta", timeout=max(1, int(timeout * 1000)),
                                 retry_options=types.HttpRetryOptions(attempts=1))
        self._client = genai.Client(api_key=api_key, http_options=http)
        self._config = types.GenerateContentConfig(
            system_instruction=INSTRUCTIONS, temperature=0.0, response_mime_type="application/json",
            response_schema=RESPONSE_SCHEMA, max_output_tokens=256)

    # -- the abstract method: one call per text (the CLI and evals); the gateway uses ascore ------
    def score(self, texts: Sequence[str]) -> list[Scores]:
        return [self._guarded(lambda t=t: self._retrying_sync(t)) for t in texts]

    async def ascore(self, text: str) -> Scores:
        self._admit()
        try:
            async with asyncio.timeout(self.timeout):
                async for attempt in AsyncRetrying(**self._retry_args()):
                    with attempt:
                        result = await self._call_async(text)
        except TimeoutError:
            self.breaker.failure()
            raise ClassifierTimeout(f"gemini took longer than {self.timeout:g} s") from None
        except ClassifierFailed:
            self.breaker.failure()
            raise
        self.breaker.success()
        return result

    # -- helpers ---------------------------------------------------------------------------------
    def _admit(self) -> None:
        if not self.breaker.allow():
            raise ClassifierUnavailable(f"gemini's circuit is open for {self.breaker.retry_in():.0f} s more "
                                        "after repeated failures")

    def _guarded(self, call: Any) -> Scores:
        self._admit()
        try:
            result = call()
        except ClassifierFailed:
            self.breaker.failure()
            raise
        self.breaker.success()
        return result

    def _retry_args(self) -> dict[str, Any]:
        return {"stop": stop_after_attempt(1 + self.retries) | stop_after_delay(self.timeout),
                "wait": wait_random_exponential(multiplier=0.05, max=0.5),
                "retry": retry_if_exception(lambda e: isinstance(e, ClassifierFailed) and e.retryable),
                "reraise": True}

    def _retrying_sync(self, text: str) -> Scores:
        for attempt in Retrying(**self._retry_args()):
            with attempt:
                try:
                    response = self._client.models.generate_content(model=self.model, contents=_contents(text),
                                                                    config=self._config)
                except Exception as exc:  # mapped to our errors just below; nothing is swallowed
                    raise self._failure(exc) from exc
                return parse_answer(response.text)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call_async(self, text: str) -> Scores:
        try:
            response = await self._client.aio.models.generate_content(model=self.model, contents=_contents(text),
                                                                      config=self._config)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # mapped to our errors just below; nothing is swallowed
            raise self._failure(exc) from exc
        return parse_answer(response.text)

    def _failure(self, exc: Exception) -> ClassifierFailed:
        if isinstance(exc, self._errors.APIError):
            retryable = exc.code == 429 or (isinstance(exc.code, int) and exc.code >= 500)
            return ClassifierFailed(f"gemini answered HTTP {exc.code}: {str(exc.message or '')[:120]}",
                                    retryable=retryable)
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(exc).__name__:
            return ClassifierTimeout(f"gemini did not answer within {self.timeout:g} s")
        if isinstance(exc, (ConnectionError, OSError)) or "Connect" in type(exc).__name__:
            return ClassifierFailed(f"cannot reach gemini: {type(exc).__name__}", retryable=True)
        if isinstance(exc, ValueError):  # the SDK's own parsing of an odd body
            return InvalidAnswer(f"gemini's answer could not be read: {str(exc)[:120]}")
        return ClassifierFailed(f"gemini call failed: {type(exc).__name__}: {str(exc)[:120]}")

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing is best-effort
            pass


def _contents(text: str) -> str:
    return f"Route this prompt:\n<prompt>\n{text[:MAX_PROMPT_CHARS]}\n</prompt>"
