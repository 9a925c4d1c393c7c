"""``oracle-council bench generate``: the in-process backend's generation throughput with LoRA
adapters: one adapter for the whole batch beside a batch that mixes adapters, for our batching
engine and for peft's own mixed-adapter batches, in one run on one device.

    oracle-council bench generate                     # a small Qwen2-shaped model on the CPU
    oracle-council bench generate --shape qwen1.5b    # the 1.5B shape (for a GPU)

design.md §5's goal: a mixed batch costs at most 1.3x a single-adapter batch (the anchor: peft's
mixed-adapter batch of 16 is 2.5x slower than one adapter, on a GPU). The model is built from a
config (random weights, no download) with ``--adapters`` random LoRA adapters (r=16 on all seven
linear layers, B not zero so every adapter changes the output), loaded through peft as the
backend loads them. Every measurement decodes the same ``--batch`` prompts of ``--prompt-len``
tokens for ``--new-tokens`` tokens each (end of sequence ignored), greedy, and counts generated
tokens over wall time, prefill included:

- **ours, one adapter**: ``gateway/backends/batching.py``'s engine, every row on adapter 1;
- **ours, mixed**: the same engine, rows spread round-robin over the adapters and the base model;
- **peft, one adapter** and **peft, mixed**: ``PeftModel.generate`` on the same batch, the
  second with ``adapter_names`` (peft's mixed-batch inference);
- **ours, one at a time**: the engine with ``max_batch`` 1 (how the backend served requests
  before it batched), on a quarter of the requests, scaled.

Each runs once to warm up, then ``--repeats`` times, the measurements interleaved, and the
median is reported. Both peft and our engine run off the main thread, as in the server.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from eval.benchrun import BenchError, finish

SHAPES = {
    "qwen1.5b": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                 "intermediate_size": 8960, "vocab_size": 151936},
    "small": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
              "intermediate_size": 1408, "vocab_size": 8192},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 256},
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GOAL_MIXED_RATIO = 1.3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small",
                        help="model shape, random weights (default small: hidden 512, 8 layers; qwen1.5b for a GPU)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--adapters", type=int, default=4, help="LoRA adapters loaded (default 4)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--batch", type=int, default=16, help="requests decoded together (default 16)")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per request (default 64)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per request (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    if min(args.adapters, args.rank, args.batch, args.prompt_len, args.new_tokens, args.repeats) < 1:
        print("oracle-council bench generate: --adapters, --rank, --batch, --prompt-len, --new-tokens and "
              "--repeats must be positive", file=sys.stderr)
        return 2
    return finish("generate", args, bench, report)


def _build(args: argparse.Namespace, device: str, dtype, folder: Path):
    """A random Qwen2-shaped base with ``args.adapters`` random LoRA adapters, loaded by peft."""
    import warnings

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    shape = SHAPES[args.shape]
    config = Qwen2Config(**shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                         tie_word_embeddings=True, max_position_embeddings=4096)
    torch.manual_seed(args.seed)
    base = AutoModelForCausalLM.from_config(config, dtype=dtype)
    base.save_pretrained(folder / "base")
    names = [f"adapter{k}" for k in range(1, args.adapters + 1)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        for name in names:
            lora = get_peft_model(AutoModelForCausalLM.from_pretrained(folder / "base", dtype=dtype),
                                  LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS))
            for pname, p in lora.named_parameters():
                if "lora_B" in pname:  # peft starts B at zero: make every adapter matter
                    torch.nn.init.normal_(p, std=0.02)
            lora.save_pretrained(folder / name)

        def load():
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder / "base", dtype=dtype),
                                              folder / names[0], adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(folder / name, adapter_name=name)
            return model.to(device).eval()

        return load, names, config


def _engine_run(engine, prompts: list[list[int]], adapters: list[int], new_tokens: int, sync) -> float:
    """Submit every prompt at once; seconds until the last one ends."""
    from gateway.backends.batching import Sequence

    remaining = [len(prompts)]
    done = threading.Event()
    errors: list[BaseException] = []

    def ended(*_: object) -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set()

    def failed(exc: BaseException) -> None:
        errors.append(exc)
        ended()

    seqs = [Sequence(adapter=adapter, tokenize=lambda ids=ids: ids, max_new=new_tokens, min_new=new_tokens,
                     temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=0, cancelled=threading.Event(),
                     on_start=lambda n: None, on_token=lambda t: False, on_end=ended, on_error=failed)
            for ids, adapter in zip(prompts, adapters)]
    start = time.perf_counter()
    engine.submit(*seqs)
    done.wait()
    sync()
    if errors:
        raise BenchError(f"the engine failed: {errors[0]!r}")
    return time.perf_counter() - start


def bench(args: argparse.Namespace) -> dict:
    import tempfile

    import torch

    from gateway.backends.batching import Engine, install_multi_lora

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    B, P, G = args.batch, args.prompt_len, args.new_tokens

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        load, names, config = _build(args, device, dtype, Path(tmp))
        g = torch.Generator().manual_seed(args.seed)
        prompts = [torch.randint(0, config.vocab_size, (P,), generator=g).tolist() for _ in range(B)]
        one = [1] * B
        mixed = [k % (len(names) + 1) for k in range(B)]  # adapter 0 is the base model
        peft_names = [names[a - 1] if a else "__base__" for a in mixed]
        results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                         "dtype": str(dtype).removeprefix("torch."), "shape": args.shape, "adapters": len(names),
                         "rank": args.rank, "batch": B, "prompt_len": P, "new_tokens": G, "repeats": args.repeats,
                         "versions": _versions(), "runs": {}}

        # peft's own generate, one adapter and mixed (adapter_names), on the same batch, run on a
        # worker thread as the backend ran it before it batched (on 2 cores, torch runs ~1.4x
        # faster on the main thread while no other thread has used it: not a fair comparison)
        peft_model = load()
        ids = torch.tensor(prompts, device=device)
        worker = ThreadPoolExecutor(max_workers=1)

        def peft_generate(**extra) -> float:
            def go() -> float:
                peft_model.set_adapter(names[0])
                start = time.perf_counter()
                with torch.inference_mode():
                    peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=G, min_new_tokens=G, pad_token_id=0, **extra)
                sync()
                return time.perf_counter() - start
            return worker.submit(go).result()

        model, rows = install_multi_lora(load(), names)
        common = {"device": device, "eos": set(), "pad": 0, "context": config.max_position_embeddings, "name": "bench"}
        engine = Engine(model, rows, max_batch=B, **common)
        serial = Engine(model, rows, max_batch=1, **common)
        quarter = max(1, B // 4)
        measures = {
            "peft, one adapter": peft_generate,
            "peft, mixed": lambda: peft_generate(adapter_names=peft_names),
            "ours, one adapter": lambda: _engine_run(engine, prompts, one, G, sync),
            "ours, mixed": lambda: _engine_run(engine, prompts, mixed, G, sync),
            "ours, one at a time": lambda: _engine_run(serial, prompts[:quarter], mixed[:quarter], G, sync) * B / quarter,
        }
        try:
            for measure in measures.values():  # warm-up
                measure()
            times: dict[str, list[float]] = {name: [] for name in measures}
            for _ in range(args.repeats):  # interleaved, so drift touches every measurement alike
                for name, measure in measures.items():
                    times[name].append(measure())
        finally:
            engine.close()
            serial.close()
            worker.shutdown()
        results["runs"] = {name: statistics.median(t) for name, t in times.items()}

    runs = results["runs"]
    results["tokens_per_s"] = {k: B * G / v for k, v in runs.items()}
    results["mixed_over_one"] = {"ours": runs["ours, mixed"] / runs["ours, one adapter"],
                                 "peft": runs["peft, mixed"] / runs["peft, one adapter"]}
    results["goal_mixed_over_one"] = GOAL_MIXED_RATIO
    return results


def _versions() -> dict:
    from importlib import metadata

    return {d: metadata.version(d) for d in ("torch", "transformers", "peft")}


def report(r: dict) -> str:
    lines = [f"bench generate: {r['shape']} shape, {r['adapters']} adapters r={r['rank']}, batch {r['batch']}, "
             f"prompt {r['prompt_len']} + {r['new_tokens']} new tokens, {r['dtype']} on {r['device']}; "
             f"median of {r['repeats']}",
             f"{'':24}{'seconds':>10}{'tokens/s':>12}"]
    for name, seconds in r["runs"].items():
        lines.append(f"{name:24}{seconds:>10.3f}{r['tokens_per_s'][name]:>12.0f}")
    ours, peft = r["mixed_over_one"]["ours"], r["mixed_over_one"]["peft"]
    verdict = "met" if ours <= r["goal_mixed_over_one"] else "NOT met"
    lines += [f"mixed / one adapter: ours {ours:.2f}x, peft {peft:.2f}x "
              f"(goal <= {r['goal_mixed_over_one']}x: {verdict})",
              f"ours batched vs one at a time: {r['runs']['ours, one at a time'] / r['runs']['ours, mixed']:.1f}x "
              "the throughput (mixed batch)",
              f"ours vs peft, mixed batch: {r['runs']['peft, mixed'] / r['runs']['ours, mixed']:.2f}x"]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m eval.bench_generate", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
