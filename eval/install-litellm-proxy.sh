#!/usr/bin/env bash
# Install the LiteLLM proxy in its own venv, for the side-by-side gateway benchmark
# (oracle-council bench gateway --litellm ...). The package list is the one measured in
# /work/shared/docs/environment.md: litellm[proxy] does not resolve here, so the proxy's
# imports are installed by hand. Idempotent: does nothing when the proxy already starts.
set -euo pipefail

VENV="${LITELLM_VENV:-.venv-litellm}"
PYTHON="${PYTHON:-python3}"
export LITELLM_LOCAL_MODEL_COST_MAP=True  # no network here: do not fetch the cost map on --help

if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/litellm" --help >/dev/null 2>&1; then
    echo "litellm proxy already installed in $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet litellm==1.110.2 fastapi uvicorn orjson backoff apscheduler pyyaml \
    python-multipart cryptography pyjwt email-validator rq gunicorn "websockets>=15,<16" granian \
    uvloop hiredis fastapi-sso pynacl "mcp>=2.3,<3" litellm-proxy-extras litellm-enterprise semver \
    expression soundfile
"$VENV/bin/litellm" --help >/dev/null
echo "litellm proxy installed: $VENV/bin/litellm"
