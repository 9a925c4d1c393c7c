"""oracle-council gateway: one OpenAI- and Ollama-compatible endpoint over LoRA specialists.

Importing this package is cheap: no torch, sentence-transformers or litellm. Build the app
with ``gateway.app.create_app(config)``.
"""

__version__ = "0.1.0"
