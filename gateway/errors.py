"""Errors raised by the gateway, and how they map to HTTP.

Every error the gateway can return to a client is a ``GatewayError``. Routes never build
error responses themselves: the app's exception handlers turn a ``GatewayError`` into the
wire format of the API family that received the request (OpenAI or Ollama), once.

    GatewayError                       status  OpenAI type
    ├── ConfigError                      -      (raised at start-up, never sent)
    ├── InvalidRequest                  400    invalid_request_error
    │   └── PayloadTooLarge             413    invalid_request_error
    ├── AuthenticationError             401    authentication_error
    ├── ModelNotFound                   404    invalid_request_error (code model_not_found)
    └── UpstreamError                   502    upstream_error
        ├── UpstreamUnavailable         503    upstream_unavailable   (refused, circuit open)
        ├── UpstreamTimeout             504    upstream_timeout
        ├── UpstreamStatusError         the upstream's 4xx, else 502
        └── UpstreamProtocolError       502    upstream_error          (malformed body or stream)

``UpstreamError.retryable`` says whether the same request may be sent again (to the same
deployment or another one) because nothing has reached the client yet: refused connections,
timeouts before the first byte, 429 and 502-504.
"""

from __future__ import annotations


class GatewayError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None
    accounted = False  # True once a service has counted and logged the request that raised it

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_openai(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_ollama(self) -> dict:
        return {"error": self.message}


class ConfigError(GatewayError):
    """The configuration file is invalid; the message names the file, the table and the key."""

    error_type = "config_error"


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class UpstreamError(GatewayError):
    """A backend failed. ``retryable`` is true when nothing reached the client yet and a
    second attempt could succeed."""

    status_code = 502
    error_type = "upstream_error"
    retryable = False

    def __init__(self, message: str, *, backend: str | None = None, retryable: bool | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.backend = backend
        if retryable is not None:
            self.retryable = retryable


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    error_type = "upstream_unavailable"
    retryable = True


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "upstream_timeout"
    retryable = True


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an HTTP error. 429 and 502-504 are retryable; other 4xx are
    the client's fault and are passed on with their status; other 5xx become 502."""

    RETRYABLE = frozenset({429, 502, 503, 504})

    def __init__(self, message: str, *, upstream_status: int, backend: str | None = None) -> None:
        super().__init__(message, backend=backend, retryable=upstream_status in self.RETRYABLE)
        self.upstream_status = upstream_status
        if upstream_status == 429:
            self.status_code = 429
            self.error_type = "rate_limit_error"
        elif 400 <= upstream_status < 500:
            self.status_code = upstream_status
            self.error_type = "invalid_request_error"
        else:
            self.status_code = 502


class UpstreamProtocolError(UpstreamError):
    pass
