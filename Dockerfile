# oracle-council gateway, CPU image. Serves the embedded offline default unless a config is
# mounted:  docker run -p 8000:8000 -v $PWD/config:/config oracle-council serve --config /config/oracle-council.toml --host 0.0.0.0
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    ORACLE_COUNCIL_HOME=/home/oracle/.cache/oracle-council HF_HUB_OFFLINE=1

# CPU torch, pinned: a bare `torch` would pull a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

RUN useradd --create-home --uid 10001 oracle
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY router ./router
COPY training ./training
COPY eval ./eval
COPY config ./config
RUN pip install '.[local,train,litellm,embed,gemini]'

USER oracle
# Build the embedded default's tiny model and adapters now, so the container starts offline;
# routing one prompt trains and caches the default router classifier the same way.
RUN oracle-council demo && oracle-council route "warm up the router" > /dev/null

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["oracle-council"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
