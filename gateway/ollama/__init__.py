"""The Ollama-native API (YAZE, the ``ollama`` CLI and client): wire models (protocol),
serving logic (service), thin routes."""
