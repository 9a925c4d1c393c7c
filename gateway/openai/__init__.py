"""The OpenAI-compatible API: wire models (protocol), serving logic (service), thin routes."""
