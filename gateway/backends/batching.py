"""Continuous batching for the in-process backend: many requests, each under its own LoRA
adapter (or none), decoded together, one forward pass per token for the whole batch.

Two parts, both used only on the backend's engine thread (torch is imported lazily by the
caller; importing this module imports nothing heavy):

``install_multi_lora(peft_model, names)``
    replaces every peft ``lora.Linear`` by a ``MultiLoRALinear`` that holds all the adapters
    and picks one per batch row, and returns the plain transformers model and the ``RowAdapters``
    that every forward reads its row assignment from. When every row of a forward uses the same
    adapter (the common case, and always for a lone request) a layer computes exactly what peft
    computes (``base(x) + B(A(x)) * scaling``, the same operations in the same order), so a lone
    request's greedy reply is peft's bit for bit. When rows use different adapters, the layer
    runs one matmul against all adapters' A matrices stacked, zeroes each row's columns that
    belong to other adapters, and one matmul against the stacked (pre-scaled) B matrices: two
    matmuls per layer whatever the mix, where peft loops over the adapters present. Only plain
    LoRA on linear layers is batched (what our trainer, vLLM and llama.cpp use); DoRA, LoRA
    biases, embedding or convolution LoRA and ``modules_to_save`` are refused with the reason.

``Engine``
    one thread running the decode loop. ``submit`` queues a ``Sequence``. Every iteration admits
    waiting sequences up to ``max_batch`` (their prompts prefilled together, left-padded), then
    runs one decode step over every running sequence and retires the finished and the cancelled
    ones. The batch's KV cache is kept left-padded: a newcomer's cache is padded on the left to
    the batch's length (or the batch's to the newcomer's), retired rows are dropped, and columns
    that have become padding in every row are trimmed. Sampling is per row (temperature, top-p,
    top-k, repetition penalty, min tokens), each sequence drawing from its own generator, so a
    seeded request gives the same reply whatever else is in the batch.
"""

from __future__ import annotations

import collections
import inspect
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

BASE_INDEX = 0  # row adapter index meaning "no adapter"


class UnsupportedAdapter(ValueError):
    """An adapter the batched layers cannot run (DoRA, LoRA on embeddings, ...)."""


# -- the layers ----------------------------------------------------------------------------------

class RowAdapters:
    """Which adapter each row of the next forward uses; shared by every ``MultiLoRALinear``.

    ``single`` is the adapter index when all rows agree (``mask`` is then None); otherwise
    ``mask`` is a [rows, 1, adapters x rank] tensor of ones over each row's own adapter's block."""

    def __init__(self, blocks: Any) -> None:
        self.blocks = blocks  # [adapters + 1, adapters x rank]: row j is adapter j's block of ones
        self.single: int = BASE_INDEX
        self.mask: Any = None

    def assign(self, indices: Seq[int]) -> None:
        import torch

        if len(set(indices)) == 1:
            self.single, self.mask = indices[0], None
        else:
            rows = torch.tensor(list(indices), device=self.blocks.device)
            self.mask = self.blocks.index_select(0, rows).unsqueeze(1)


def _multi_lora_linear_class() -> type:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class MultiLoRALinear(nn.Module):
        """A linear layer with every adapter's LoRA; ``rows`` says which applies to which row."""

        def __init__(self, base_layer: nn.Module, loras: list[tuple[Any, Any, float] | None], rank: int,
                     rows: RowAdapters) -> None:
            super().__init__()
            self.base_layer = base_layer
            self.rows = rows
            self.loras = [None, *loras]  # by adapter index; None: this adapter leaves the layer alone
            weight = base_layer.weight
            a_all = weight.new_zeros(len(loras) * rank, base_layer.in_features)
            b_all = weight.new_zeros(base_layer.out_features, len(loras) * rank)
            for j, lora in enumerate(loras):
                if lora is not None:
                    a, b, scaling = lora
                    r = a.shape[0]
                    a_all[j * rank:j * rank + r] = a
                    b_all[:, j * rank:j * rank + r] = b * scaling
            self.register_buffer("a_all", a_all, persistent=False)
            self.register_buffer("b_all", b_all, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.base_layer(x)
            mask = self.rows.mask
            if mask is None:
                lora = self.loras[self.rows.single]
                if lora is None:
                    return out
                a, b, scaling = lora
                return out + F.linear(F.linear(x.to(a.dtype), a), b) * scaling
            h = F.linear(x.to(self.a_all.dtype), self.a_all) * mask.to(self.a_all.dtype)
            return out + F.linear(h, self.b_all).to(out.dtype)

    return MultiLoRALinear


def install_multi_lora(peft_model: Any, names: Seq[str]) -> tuple[Any, RowAdapters]:
    """Swap peft's LoRA layers for batched ones; returns (the plain model, its ``RowAdapters``).

    ``names`` are the adapter names in index order (index 0 is the base model, so ``names[k]``
    is adapter index ``k + 1``)."""
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora import Linear as LoraLinear

    for name in names:
        cfg = peft_model.peft_config[name]
        if getattr(cfg, "modules_to_save", None):
            raise UnsupportedAdapter(f"adapter {name!r} trains whole modules too (modules_to_save="
                                     f"{list(cfg.modules_to_save)}); only plain LoRA is served")
        if getattr(cfg, "use_dora", False):
            raise UnsupportedAdapter(f"adapter {name!r} is a DoRA adapter; only plain LoRA is served")
    layers = [(path, m) for path, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    rank = 1
    for path, layer in layers:
        if type(layer) is not LoraLinear or getattr(layer, "fan_in_fan_out", False):
            raise UnsupportedAdapter(f"{path}: {type(layer).__name__} LoRA is not served by the local backend "
                                     "(plain LoRA on linear layers only)")
        for name in layer.lora_A:
            if layer.use_dora.get(name) or layer.lora_B[name].bias is not None:
                raise UnsupportedAdapter(f"adapter {name!r} at {path} uses DoRA or a LoRA bias; "
                                         "only plain LoRA is served")
            rank = max(rank, layer.r[name])

    some = next(peft_model.parameters())
    blocks = torch.zeros(len(names) + 1, len(names) * rank, device=some.device, dtype=some.dtype)
    for j in range(len(names)):
        blocks[j + 1, j * rank:(j + 1) * rank] = 1
    rows = RowAdapters(blocks)
    cls = _multi_lora_linear_class()
    for path, layer in layers:
        loras = []
        for name in names:
            if name in layer.lora_A:
                loras.append((layer.lora_A[name].weight.detach(), layer.lora_B[name].weight.detach(),
                              float(layer.scaling[name])))
            else:
                loras.append(None)
        parent_path, _, attr = path.rpartition(".")
        setattr(peft_model.get_submodule(parent_path), attr, cls(layer.base_layer, loras, rank, rows))
    model = peft_model.base_model.model  # the transformers model, now holding the batched layers
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    return model, rows


# -- the decode loop -----------------------------------------------------------------------------

@dataclass(eq=False)
class Sequence:
    """One request as the engine sees it. The callbacks run on the engine thread.

    ``tokenize`` gives the prompt's token ids (it may raise the request's own error, which then
    fails this sequence alone). ``on_start(prompt_tokens)``, then ``on_token(id)`` for every
    token that is not an end-of-sequence token (it returns True when a stop string has been
    reached), then ``on_end(finish_reason, completion_tokens)``, or ``on_error(exc)``."""

    adapter: int
    tokenize: Callable[[], list[int]]
    max_new: int
    min_new: int
    temperature: float       # 0: greedy
    top_p: float
    top_k: int
    repetition_penalty: float
    seed: int | None
    cancelled: threading.Event
    on_start: Callable[[int], None]
    on_token: Callable[[int], bool]
    on_end: Callable[[str, int], None]
    on_error: Callable[[BaseException], None]
    ids: list[int] = field(default_factory=list)      # prompt, then generated tokens
    generated: int = 0
    generator: Any = None


class _Stop:
    pass


class Engine:
    def __init__(self, model: Any, rows: RowAdapters | None, *, device: str, eos: set[int], pad: int,
                 context: int, max_batch: int, name: str) -> None:
        self.model, self.rows, self.device = model, rows, device
        # transformers 5.24 renamed forward's past_key_values to cache (the old name warns)
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.eos, self.pad, self.context, self.max_batch = sorted(eos), pad, context, max_batch
        self._inbox: queue.SimpleQueue[tuple[Sequence, ...] | _Stop] = queue.SimpleQueue()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._cache: Any = None       # DynamicCache, [rows, heads, columns, dim] per layer
        self._mask: Any = None        # [rows, columns]: 1 where a column holds one of the row's tokens
        self._thread = threading.Thread(target=self._loop, name=f"local-{name}-engine", daemon=True)
        self._closing = False
        self.name = name
        self.steps = 0                # decode steps run (for tests and metrics)
        self.peak_batch = 0           # the most sequences decoded together
        self._thread.start()

    # -- called from any thread --------------------------------------------------------------

    def submit(self, *seqs: Sequence) -> None:
        """Queue sequences; several given together are admitted together (as far as room allows)."""
        self._inbox.put(seqs)

    def close(self) -> None:
        self._closing = True
        self._inbox.put(_Stop())

    def counts(self) -> dict[str, int]:
        """Sequences in the batch, and waiting for a place in it (read without a lock: a scrape's
        snapshot, off by one at most while the engine moves a sequence)."""
        return {"running": len(self._running), "waiting": len(self._waiting) + self._inbox.qsize()}

    # -- the engine thread -------------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        from gateway.errors import UpstreamUnavailable

        with torch.inference_mode():
            while True:
                if not self._take(block=not self._running and not self._waiting):
                    break
                admitted = self._admit()
                try:
                    if admitted:
                        self._prefill(admitted)
                    if self._running:
                        self._decode()
                except Exception as exc:  # out of memory, a CUDA fault: every sequence in the step fails
                    failed = [*self._running, *(s for s in admitted if s not in self._running)]
                    logger.error("local engine: a step failed with %d sequences", len(failed), exc_info=exc)
                    for seq in failed:
                        seq.on_error(exc)
                    self._running, self._cache, self._mask = [], None, None
        gone = UpstreamUnavailable(f"backend {self.name!r} is shutting down", backend=self.name)
        for seq in [*self._running, *self._waiting]:
            seq.on_error(gone)

    def _take(self, block: bool) -> bool:
        """Move submitted sequences to the waiting line, and drop those cancelled while waiting
        (they never start); False once closing."""
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
            while True:
                if isinstance(item, _Stop) or self._closing:
                    return False
                self._waiting.extend(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass
        if any(seq.cancelled.is_set() for seq in self._waiting):
            self._waiting = collections.deque(seq for seq in self._waiting if not seq.cancelled.is_set())
        return not self._closing

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        while self._waiting and len(self._running) + len(admitted) < self.max_batch:
            seq = self._waiting.popleft()
            if seq.cancelled.is_set():
                continue  # cancelled while waiting: never starts
            try:
                ids = seq.tokenize()
                room = self.context - len(ids)
                if not ids or room < 1:
                    from gateway.errors import InvalidRequest

                    raise InvalidRequest(f"the prompt has {len(ids)} tokens; this model takes at most "
                                         f"{self.context - 1} plus the completion", param="messages")
            except Exception as exc:
                seq.on_error(exc)
                continue
            seq.ids = list(ids)
            seq.max_new = min(seq.max_new, room)
            seq.min_new = min(seq.min_new, seq.max_new)
            seq.generator = self._generator(seq.seed)
            seq.on_start(len(ids))
            admitted.append(seq)
        return admitted

    def _generator(self, seed: int | None) -> Any:
        import torch

        g = torch.Generator(device=self.device)
        g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        return g

    def _prefill(self, new: list[Sequence]) -> None:
        import torch
        from transformers import DynamicCache

        width = max(len(s.ids) for s in new)
        ids = torch.full((len(new), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, s in enumerate(new):
            ids[i, width - len(s.ids):] = torch.tensor(s.ids)
            mask[i, width - len(s.ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self._assign(new)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self._cache_arg: DynamicCache()})
        tokens = self._choose(out.logits[:, -1, :], new)
        self._merge(new, getattr(out, self._cache_arg), mask)
        self._advance(new, tokens)

    def _decode(self) -> None:
        import torch

        seqs = self._running
        last = torch.tensor([[s.ids[-1]] for s in seqs], device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(seqs), 1))], dim=1)
        positions = torch.tensor([[len(s.ids) - 1] for s in seqs], device=self.device)
        self._assign(seqs)
        out = self.model(input_ids=last, attention_mask=self._mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self._cache_arg: self._cache})
        self._cache = getattr(out, self._cache_arg)
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(seqs))
        self._advance(seqs, self._choose(out.logits[:, -1, :], seqs))

    def _assign(self, seqs: list[Sequence]) -> None:
        if self.rows is not None:
            self.rows.assign([s.adapter for s in seqs])

    def _advance(self, seqs: list[Sequence], tokens: list[int]) -> None:
        """Hand each sequence its new token; retire the finished and the cancelled."""
        done = set()
        ended: list[tuple[Sequence, str]] = []
        for seq, token in zip(seqs, tokens):
            if seq.cancelled.is_set():
                done.add(id(seq))
                continue
            seq.ids.append(token)
            seq.generated += 1
            if token in self.eos or seq.on_token(token):  # end of sequence, or a stop string
                ended.append((seq, "stop"))
            elif seq.generated >= seq.max_new:
                ended.append((seq, "length"))
        done.update(id(seq) for seq, _ in ended)
        if done:
            keep = [i for i, s in enumerate(self._running) if id(s) not in done]
            if len(keep) < len(self._running):
                self._select(keep)
        for seq, finish in ended:  # after the batch let them go: what a client sees ended has left it
            seq.on_end(finish, seq.generated)

    def _merge(self, new: list[Sequence], cache: Any, mask: Any) -> None:
        """Append the prefilled rows to the batch, padding whichever side is shorter on the left."""
        import torch
        from transformers import DynamicCache

        if not self._running:
            self._running, self._cache, self._mask = list(new), cache, mask
            return
        old_cols, new_cols = self._mask.shape[1], mask.shape[1]
        width = max(old_cols, new_cols)

        def pad(t: Any, cols: int) -> Any:  # left-pad dim -2 (K/V) or -1 (mask) to width
            if cols == width:
                return t
            shape = list(t.shape)
            dim = -2 if t.dim() == 4 else -1
            shape[dim] = width - cols
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        layers = [(torch.cat([pad(a.keys, old_cols), pad(b.keys, new_cols)]),
                   torch.cat([pad(a.values, old_cols), pad(b.values, new_cols)]))
                  for a, b in zip(self._cache.layers, cache.layers)]
        self._cache = DynamicCache(ddp_cache_data=layers)
        self._mask = torch.cat([pad(self._mask, old_cols), pad(mask, new_cols)])
        self._running = [*self._running, *new]

    def _select(self, keep: list[int]) -> None:
        """Keep these rows of the batch; drop columns that are padding in every remaining row."""
        import torch
        from transformers import DynamicCache

        if not keep:
            self._running, self._cache, self._mask = [], None, None
            return
        rows = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, rows)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        self._mask = mask[:, start:]
        self._cache = DynamicCache(ddp_cache_data=[
            (layer.keys.index_select(0, rows)[:, :, start:], layer.values.index_select(0, rows)[:, :, start:])
            for layer in self._cache.layers])
        self._running = [self._running[i] for i in keep]

    def _choose(self, logits: Any, seqs: list[Sequence]) -> list[int]:
        """The next token of each row: greedy, or sampled with the row's own knobs and generator."""
        import torch

        logits = logits.float()
        chosen = logits.argmax(dim=-1).tolist()
        for i, seq in enumerate(seqs):
            suppress_eos = seq.generated < seq.min_new
            if seq.temperature <= 0 and seq.repetition_penalty == 1.0 and not suppress_eos:
                continue
            row = logits[i].clone()
            if seq.repetition_penalty != 1.0:  # as transformers: shrink the scores of tokens already seen
                seen = torch.tensor(sorted(set(seq.ids)), device=row.device)
                scores = row[seen]
                row[seen] = torch.where(scores < 0, scores * seq.repetition_penalty, scores / seq.repetition_penalty)
            if suppress_eos:
                row[self.eos] = float("-inf")
            if seq.temperature <= 0:
                chosen[i] = int(row.argmax())
                continue
            row = row / seq.temperature
            if 0 < seq.top_k < row.numel():
                kth = torch.topk(row, seq.top_k).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            if seq.top_p < 1.0:
                ordered, order = torch.sort(row)
                cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
                drop = cumulative <= 1 - seq.top_p
                drop[-1] = False  # always keep the most likely token
                row = row.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
            probs = row.softmax(dim=-1)
            chosen[i] = int(torch.multinomial(probs, 1, generator=seq.generator))
        return chosen
