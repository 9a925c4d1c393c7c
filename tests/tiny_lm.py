"""Tiny language-model artifacts for tests: two small, clearly different datasets, and helpers
that build a base model and train adapters on them in a few seconds on CPU."""

from __future__ import annotations

from pathlib import Path

from training.lora import LoRATrainConfig, train_lora
from training.tiny import build_tiny_base

ASM_SAMPLES = [
    {"instruction": "Write a routine that gives Link full health.", "input": "",
     "output": "FillHealth:\n    LDA.l $7EF36C\n    STA.l $7EF36D\n    RTL", "domain": "asm"},
    {"instruction": "Hook the sword swing with a JSL.", "input": "org $079CD9",
     "output": "org $079CD9\n    JSL SwordHook\n    NOP\nfreecode\nSwordHook:\n    LDA #$01\n    RTL", "domain": "asm"},
    {"instruction": "Set the rupee count to 999.", "input": "",
     "output": "    REP #$20\n    LDA #$03E7\n    STA.l $7EF360\n    SEP #$20\n    RTL", "domain": "asm"},
    {"instruction": "Why does this routine crash?", "input": "PHB\nLDA #$00\nRTL",
     "output": "PHB is never balanced by PLB, so RTL returns to a garbage address. Add PLB before RTL.",
     "domain": "asm"},
    {"instruction": "Clear the OAM buffer.", "input": "",
     "output": "    LDX #$00\n.loop\n    STZ $0800,X\n    INX\n    CPX #$80\n    BNE .loop\n    RTL", "domain": "asm"},
    {"instruction": "Play the item jingle.", "input": "",
     "output": "    LDA #$0F\n    STA $012F\n    RTL", "domain": "asm"},
]

GFX_SAMPLES = [
    {"instruction": "How many bytes does a 4bpp tile take?", "input": "",
     "output": "A 4bpp 8x8 tile takes 32 bytes: bitplanes 0-1 interleaved, then bitplanes 2-3.", "domain": "gfx"},
    {"instruction": "Convert RGB (248, 0, 0) to BGR555.", "input": "",
     "output": "Red 31, green 0, blue 0: the BGR555 word is $001F.", "domain": "gfx"},
    {"instruction": "Where does palette 2 start in CGRAM?", "input": "",
     "output": "Each 4bpp palette has 16 colours, so palette 2 starts at CGRAM index 32 (byte $40).", "domain": "gfx"},
    {"instruction": "What is an OAM entry?", "input": "",
     "output": "Four bytes: X, Y, tile number, then vhoopppN attributes; plus 2 high bits in the high table.",
     "domain": "gfx"},
    {"instruction": "Convert a 2bpp tile to 4bpp.", "input": "",
     "output": "Copy the 16 bytes of bitplanes 0-1, then append 16 zero bytes for bitplanes 2-3.", "domain": "gfx"},
    {"instruction": "How big is a tilemap entry?", "input": "",
     "output": "Two bytes: 10 bits of tile number, 3 bits of palette, priority, and X/Y flip.", "domain": "gfx"},
]

FAST = LoRATrainConfig(learning_rate=5e-3, max_steps=30, batch_size=6, max_seq_len=128, warmup_steps=0,
                       seed=0, device="cpu")


def corpus() -> list[str]:
    return [t for s in ASM_SAMPLES + GFX_SAMPLES for t in (s["instruction"], s["input"], s["output"])]


def build_base(path: Path) -> Path:
    return build_tiny_base(path, corpus(), seed=0)


def train(base: Path, samples: list[dict], path: Path, config: LoRATrainConfig = FAST) -> Path:
    train_lora(base, samples, path, config, progress=False)
    return path
