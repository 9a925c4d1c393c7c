"""training.trainer: the full trainer learns, labels only replies, packs without cross-talk,
resumes exactly, is deterministic, speaks Alpaca, and runs end to end through the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from gateway.cli import main
from tests import tiny_lm
from training.domains import specialist_for
from training.lora import to_messages
from training.trainer import IGNORE_INDEX, DataError, TrainConfig, last_checkpoint, load_dataset, train
from training.trainer.data import Example, alpaca_prompt, collate, encode_record, pack

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft on transformers 5

SAMPLES = Path(__file__).resolve().parents[2] / "training" / "samples"
FAST = TrainConfig(learning_rate=5e-3, max_steps=24, batch_size=2, grad_accum=1, max_seq_len=128, warmup_steps=0,
                   seed=0, device="cpu", eval_steps=0, save_steps=0, quiet=True)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(tmp: Path, base: Path, cfg: TrainConfig = FAST, samples=None, name: str = "out", **kw):
    data = write_jsonl(tmp / f"{name}.jsonl", samples or tiny_lm.ASM_SAMPLES)
    return train(data, str(base), "euclid-asm", tmp / name, cfg, **kw)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def greedy(base: Path, adapter: Path | None, prompt: str, tokens: int = 30) -> str:
    from peft import PeftModel

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    out = model.eval().generate(ids, max_new_tokens=tokens, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy shared CPU, two spinning threads make these runs 3x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(one_thread, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory):
    return run(tmp_path_factory.mktemp("trainer"), tiny_base)


def test_loss_falls_and_adapter_changes_greedy_output(tiny_base: Path, trained) -> None:
    assert len(trained.losses) == FAST.max_steps
    assert sum(trained.losses[-3:]) < 0.2 * sum(trained.losses[:3]), trained.losses
    sample = tiny_lm.ASM_SAMPLES[0]
    tok = AutoTokenizer.from_pretrained(tiny_base)
    prompt = tok.apply_chat_template(to_messages(sample)[:-1], tokenize=False, add_generation_prompt=True)
    tuned = greedy(tiny_base, trained.out_dir, prompt)
    assert tuned != greedy(tiny_base, None, prompt)
    assert tuned.startswith(sample["output"][:15])


def test_output_folder_is_a_peft_adapter_with_its_records(tiny_base: Path, trained) -> None:
    out = trained.out_dir
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_base.resolve())
    assert adapter["r"] == 16 and adapter["lora_alpha"] == 32 and adapter["lora_dropout"] == 0.05
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    config = json.loads((out / "training_config.json").read_text())
    # what ran is recorded: FAST leaves gradient checkpointing to auto, which is off on a CPU
    assert FAST.gradient_checkpointing is None
    assert TrainConfig.from_dict(config["hyperparameters"]) == dataclasses.replace(FAST, gradient_checkpointing=False)
    assert config["specialist"] == "euclid-asm" and config["data_stats"]["train"]["samples"] == 6
    assert {"torch", "transformers", "peft", "accelerate"} <= set(config["versions"])
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"]] == list(range(1, FAST.max_steps + 1))
    assert state["metrics"]["tokens_per_second"] > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_defaults_are_the_users_recipe() -> None:
    d = TrainConfig()
    assert (d.rank, d.alpha, d.dropout, d.epochs, d.batch_size, d.grad_accum) == (16, 32, 0.05, 3.0, 4, 4)
    assert (d.learning_rate, d.warmup_steps, d.lr_scheduler, d.max_seq_len, d.seed) == (2e-4, 50, "cosine", 2048, 42)
    assert d.packing and d.template == "chatml"


def test_labels_cover_the_reply_only(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    sample = {"instruction": "Set the rupee count.", "input": "", "output": "LDA #$03E7"}
    ids, labels, cut = encode_record(tok, sample, "chatml", 512)
    assert not cut
    prompt = tok.apply_chat_template(to_messages(sample)[:-1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == "LDA #$03E7<|im_end|>\n"
    # targets are shifted within each sample: the last position of a sample predicts nothing
    a, b = Example(ids, labels, "a"), Example(ids[:5], [IGNORE_INDEX, 7, 8, 9, 10], "b")
    _, pos, tgt = collate([[a, b]], pad_id=0, width=len(a) + 5 + 3)
    assert tgt[0, len(a) - 1] == IGNORE_INDEX and tgt[0, len(a) + 4] == IGNORE_INDEX
    assert tgt[0, len(a):len(a) + 4].tolist() == [7, 8, 9, 10]
    assert pos[0].tolist() == list(range(len(a))) + list(range(5)) + [0, 1, 2]


def test_alpaca_template(tiny_base: Path, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    sample = {"instruction": "Fix it.", "input": "PHB\nRTL", "output": "Add PLB."}
    ids, labels, _ = encode_record(tok, sample, "alpaca", 512)
    assert tok.decode(ids) == "### Instruction:\nFix it.\n\n### Input:\nPHB\nRTL\n\n### Response:\nAdd PLB.<|im_end|>"
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == "Add PLB.<|im_end|>"
    assert alpaca_prompt("Hi") == "### Instruction:\nHi\n\n### Response:\n"
    cfg = TrainConfig(**{**FAST.to_dict(), "template": "alpaca", "max_steps": 30})
    outcome = run(tmp_path, tiny_base, cfg)
    first = tiny_lm.ASM_SAMPLES[0]
    assert sum(outcome.losses[-3:]) < 0.2 * sum(outcome.losses[:3])
    assert greedy(tiny_base, outcome.out_dir, alpaca_prompt(first["instruction"])).startswith(first["output"][:15])


def test_packing_fills_rows_and_keeps_samples_apart(tiny_base: Path) -> None:
    rows = pack([30, 40, 50, 100, 8], [0, 1, 2, 3, 4], max_seq_len=128, packing=True)
    assert rows == [[0, 1, 2, 4], [3]]
    assert pack([30, 40], [1, 0], 128, packing=False) == [[1], [0]]

    tok = AutoTokenizer.from_pretrained(tiny_base)
    examples = [Example(*encode_record(tok, s, "chatml", 128)[:2], str(i)) for i, s in enumerate(tiny_lm.ASM_SAMPLES[:3])]
    ids, pos, tgt = collate([examples], pad_id=0, width=sum(map(len, examples)) + 4)
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation=attn).eval()
        with torch.no_grad():
            # use_cache=False as in the trainer: with a KV cache transformers ignores the restarts
            packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
            start = 0
            for e in examples:
                alone = model(input_ids=torch.tensor([e.ids])).logits[0]
                torch.testing.assert_close(packed[start:start + len(e)], alone, atol=1e-4, rtol=1e-4)
                start += len(e)
            # the check can fail: without position_ids the samples do attend to each other
            leaky = model(input_ids=ids, use_cache=False).logits[0]
            assert not torch.allclose(leaky[len(examples[0]):len(examples[0]) + len(examples[1])],
                                      model(input_ids=torch.tensor([examples[1].ids])).logits[0], atol=1e-3)

    # the trainer's own loss module: the packed row's summed loss is the sum of the samples' losses
    from peft import LoraConfig, get_peft_model

    from training.trainer.model import make_loss_model

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
    loss_model = make_loss_model(peft_model, chunk_tokens=16)
    with torch.no_grad():
        total, n = loss_model(ids, pos, tgt)
        parts = [loss_model(*collate([[e]], pad_id=0)) for e in examples]
    assert n == sum(k for _, k in parts) == sum(1 for t in tgt[0] if t != IGNORE_INDEX)
    torch.testing.assert_close(total, sum(s for s, _ in parts), atol=1e-3, rtol=1e-5)
    full = torch.nn.functional.cross_entropy(peft_model(input_ids=ids, position_ids=pos, use_cache=False).logits[0],
                                             tgt[0], reduction="sum", ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(total, full.detach(), atol=1e-3, rtol=1e-5)  # chunking changes nothing

    # the flash-attention layout (all rows end to end, no padding, cu_seq_lens) gives the same loss;
    # here sdpa reads the boundaries from position_ids, flash_attn (GPU) from cu_seq_lens
    from training.trainer.loop import _batch

    rows = [[0, 1], [2]]
    padded = _batch(rows, examples, 0, "sdpa", "cpu")
    flat = _batch(rows, examples, 0, "sdpa", "cpu", flatten=True)
    assert padded["input_ids"].shape[0] == 2 and flat["input_ids"].shape == (1, sum(map(len, examples)))
    assert flat["cu_seq_lens_q"].tolist() == [0, len(examples[0]), len(examples[0]) + len(examples[1]),
                                              sum(map(len, examples))]
    with torch.no_grad():
        a = loss_model(padded["input_ids"], padded["position_ids"], padded["targets"])
        b = loss_model(flat["input_ids"], flat["position_ids"], flat["targets"])
    assert a[1] == b[1] and torch.allclose(a[0], b[0], atol=1e-3)


def test_same_seed_same_weights_other_seed_differs(tiny_base: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**FAST.to_dict(), "max_steps": 4, "dropout": 0.1})
    a = weights(run(tmp_path, tiny_base, cfg, name="a").out_dir)
    b = weights(run(tmp_path, tiny_base, cfg, name="b").out_dir)
    c = weights(run(tmp_path, tiny_base, TrainConfig(**{**cfg.to_dict(), "seed": 1}), name="c").out_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


class Interrupted(Exception):
    pass


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny_base: Path, tmp_path: Path) -> None:
    # grad accumulation, dropout, warm-up + cosine and several epochs: everything a resume must restore
    cfg = TrainConfig(**{**FAST.to_dict(), "max_steps": 8, "grad_accum": 2, "batch_size": 1, "dropout": 0.1,
                         "warmup_steps": 2, "save_steps": 3, "save_total_limit": 2, "max_seq_len": 64})
    whole = run(tmp_path, tiny_base, cfg, name="whole")

    def stop(step: int, loss: float) -> None:
        if step == 7:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(tmp_path, tiny_base, cfg, name="cut", on_step=stop)
    cut = tmp_path / "cut"
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    assert last_checkpoint(cut).name == "step-00000006"
    assert not (cut / "adapter_model.safetensors").exists()  # the run never finished
    resumed = run(tmp_path, tiny_base, cfg, name="cut", resume=True)
    assert resumed.resumed_from == 6 and len(resumed.losses) == 2
    assert resumed.losses == whole.losses[6:]
    a, b = weights(whole.out_dir), weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((cut / "trainer_state.json").read_text())
    assert [round(e["loss"], 6) for e in state["log_history"]] == [round(x, 6) for x in whole.losses]


def test_resume_refuses_changed_hyperparameters(tiny_base: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**FAST.to_dict(), "max_steps": 4, "save_steps": 2})
    run(tmp_path, tiny_base, cfg)
    with pytest.raises(ValueError, match="learning_rate"):
        run(tmp_path, tiny_base, TrainConfig(**{**cfg.to_dict(), "learning_rate": 1e-3}), resume=True)
    with pytest.raises(ValueError, match="--resume to continue it, --overwrite"):
        run(tmp_path, tiny_base, cfg)
    assert run(tmp_path, tiny_base, cfg, overwrite=True).resumed_from is None


def test_bad_data_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b", "domain": "asm"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_dataset(bad, "euclid-asm")
    bad.write_text('{"instruction": "a", "output": "b", "domain": "asm"}\n\n{"prompt": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:3: a record needs 'messages' or 'instruction'"):
        load_dataset(bad, "euclid-asm")
    bad.write_text('{"instruction": "a", "output": "b", "domain": "asm"}\n')
    with pytest.raises(DataError, match="no records for specialist 'seph-tilesmith' .found: euclid-asm"):
        load_dataset(bad, "seph-tilesmith")
    assert len(load_dataset(bad, "seph-tilesmith", all_specialists=True).train.records) == 1


def prepared_folder(root: Path) -> Path:
    """A contract-2 folder (train/val/test.jsonl, metadata.json, rejected.jsonl) from the shipped samples."""
    root.mkdir(parents=True)
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for name in ("euclid-asm", "seph-tilesmith", "master-sword"):
        for i, line in enumerate((SAMPLES / f"{name}.jsonl").read_text().splitlines()):
            s = json.loads(line)
            specialist, task = specialist_for(s["domain"])
            record = {"messages": to_messages(s), "instruction": s["instruction"], "input": s["input"],
                      "output": s["output"], "domain": s["domain"], "specialist": specialist, "task_type": task,
                      "sample_id": s["sample_id"], "quality_score": s["quality_score"], "source": s["source"],
                      "threshold": 0.4, "threshold_key": "default"}
            splits["train" if i % 10 < 8 else "val" if i % 10 == 8 else "test"].append(record)
    for split, rows in splits.items():
        write_jsonl(root / f"{split}.jsonl", rows)
    (root / "metadata.json").write_text(json.dumps({"counts": {k: len(v) for k, v in splits.items()}}))
    (root / "rejected.jsonl").write_text("")
    return root


def test_cli_trains_on_a_prepared_folder(tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = prepared_folder(tmp_path / "prepared")
    expected = sum(1 for line in (data / "train.jsonl").read_text().splitlines()
                   if json.loads(line)["specialist"] == "euclid-asm")
    code = main(["train", "--data", str(data), "--base-model", str(tiny_base), "--specialist", "euclid-asm",
                 "--output", str(tmp_path / "adapters"), "--max-steps", "4", "--max-seq-len", "192",
                 "--batch-size", "2", "--grad-accum", "2", "--device", "cpu", "--eval-steps", "2",
                 "--save-steps", "2", "--lr", "1e-3", "--warmup-steps", "1"])
    assert code == 0
    out = tmp_path / "adapters" / "euclid-asm"
    assert str(out) in capsys.readouterr().out
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.json",
            "trainer_state.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "training_config.json").read_text())
    assert config["data_stats"]["train"]["records"] == expected and config["data_stats"]["val"]["samples"] > 0
    hp = config["hyperparameters"]
    assert (hp["grad_accum"], hp["max_seq_len"], hp["learning_rate"], hp["packing"]) == (2, 192, 1e-3, True)
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["step"] for e in state["eval_history"]] == [2, 4]
    assert state["metrics"]["final_eval_loss"] == pytest.approx(state["eval_history"][-1]["eval_loss"], abs=1e-6)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]

    # --all-specialists trains master-sword on every record
    code = main(["train", "--data", str(data), "--base-model", str(tiny_base), "--specialist", "master-sword",
                 "--all-specialists", "--output", str(tmp_path / "adapters"), "--max-steps", "1", "--quiet",
                 "--max-seq-len", "128", "--device", "cpu", "--save-steps", "0"])
    assert code == 0
    ms = json.loads((tmp_path / "adapters" / "master-sword" / "training_config.json").read_text())
    assert ms["data_stats"]["train"]["records"] == len((data / "train.jsonl").read_text().splitlines())


def test_cli_reports_bad_input(tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tmp_path / "nope"), "--base-model", str(tiny_base), "--specialist", "x",
                 "--output", str(tmp_path)]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path)]) == 2
    assert "missing --base-model, --specialist, --output" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--base-model", "b", "--specialist", "s", "--output", "o",
                 "--dropout", "2"]) == 2
    assert "dropout" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_layers_train_as_the_eager_ones(tiny_base: Path, tmp_path: Path) -> None:
    """``--compile`` (torch.compile of every decoder layer, inductor) on the CPU: the path is the
    GPU's, so a break in it (peft's LoRA layers, the packed masks, the chunked loss) shows here.
    About a minute of compiling on two cores."""
    cfg = TrainConfig(**{**FAST.to_dict(), "max_steps": 4})
    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    eager = run(tmp_path / "eager", tiny_base, cfg)
    compiled = run(tmp_path / "compiled", tiny_base, dataclasses.replace(cfg, compile=True))
    assert compiled.losses[0] == pytest.approx(eager.losses[0], rel=1e-4)  # the same model, the same batch
    # then the fused kernels round differently, and lr 5e-3 carries that into the next steps
    assert compiled.losses == pytest.approx(eager.losses, rel=0.05)
    config = json.loads((compiled.out_dir / "training_config.json").read_text())
    assert config["hyperparameters"]["compile"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_in_bf16_on_cuda(tiny_base: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**FAST.to_dict(), "device": "cuda"})
    outcome = run(tmp_path, tiny_base, cfg)
    assert sum(outcome.losses[-3:]) < 0.2 * sum(outcome.losses[:3])
    config = json.loads((outcome.out_dir / "training_config.json").read_text())
    assert config["dtype"] == "bfloat16"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flash_varlen_packing_matches_samples_alone(tiny_base: Path) -> None:
    pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    from peft import LoraConfig, get_peft_model

    from training.trainer.loop import _batch
    from training.trainer.model import make_loss_model

    tok = AutoTokenizer.from_pretrained(tiny_base)
    examples = [Example(*encode_record(tok, s, "chatml", 128)[:2], str(i)) for i, s in enumerate(tiny_lm.ASM_SAMPLES)]
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.bfloat16,
                                                 attn_implementation="flash_attention_2").cuda()
    loss_model = make_loss_model(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"])).eval(), 64)
    with torch.no_grad():
        packed, n = loss_model(**_batch([[0, 1, 2], [3, 4, 5]], examples, 0, "flash_attention_2", "cuda"))
        alone = [loss_model(**_batch([[i]], examples, 0, "flash_attention_2", "cuda")) for i in range(6)]
    assert n == sum(k for _, k in alone)
    torch.testing.assert_close(packed, sum(s for s, _ in alone), rtol=2e-2, atol=0.5)
