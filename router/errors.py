"""Errors of the router. None of them ever reaches a client: the cascade catches each one,
moves on to the next classifier (or the default model) and writes what happened into the
decision's ``reason``.

    RouterError
    ├── ClassifierUnavailable      a classifier cannot run: missing extra, no API key, open circuit
    ├── ClassifierFailed           one call failed
    │   ├── ClassifierTimeout      it took longer than its budget
    │   └── InvalidAnswer          the answer is malformed or names an unknown label
    └── NoDecision                 the scores leave nothing to choose (e.g. no label of the oracle asked for)
"""

from __future__ import annotations


class RouterError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClassifierUnavailable(RouterError):
    """The classifier cannot run at all; the message says what to install or set."""


class ClassifierFailed(RouterError):
    """One classification failed; ``retryable`` says whether the same call may be tried again."""

    retryable = False

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ClassifierTimeout(ClassifierFailed):
    pass


class InvalidAnswer(ClassifierFailed):
    pass


class NoDecision(RouterError):
    pass
