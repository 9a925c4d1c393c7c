"""The internals of ``oracle-council data prepare`` (the CLI is ``training.prepare``).

Reads top to bottom as the pipeline runs:

- ``records``: find the input files, read them line by line, detect each line's layout (generator
  sample, Alpaca, ChatML, metadata under ``_metadata``) and normalize it to one ``Sample``, or
  report why it is malformed (file and line);
- ``dedup``: exact duplicates (hash of the normalized prompt) and near duplicates (cosine of
  MiniLM embeddings, per-domain thresholds), keeping the higher-quality sample;
- ``split``: the stratified train/val/test split;
- ``pipeline``: filters, counts, the summary table and the atomic write of the output folder.

Only the standard library at import time; numpy and sentence-transformers load inside the
near-duplicate step.
"""
