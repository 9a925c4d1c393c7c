"""A peft LoRA adapter folder, its base model, and whether the two fit together.

``load_adapter(dir)`` reads ``adapter_config.json`` and the weight file's header (tensor names
and shapes, no data) and groups the tensors into LoRA modules: ``model.layers.0.self_attn.q_proj``
with ``lora_A`` of shape ``(r, in)`` and ``lora_B`` of shape ``(out, r)``. ``resolve_base`` finds
the base model folder (``--base-model``, else the adapter's ``base_model_name_or_path``: a
folder, or a Hugging Face id already in the local cache). ``check_fits`` compares every module's
shapes with the base's weights, so an adapter trained on another base is refused before any
export is written.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.exporting.errors import ExportError

ADAPTER_CONFIG = "adapter_config.json"
SAFETENSORS = "adapter_model.safetensors"
PICKLED = "adapter_model.bin"
# peft writes "base_model.model.<module>.lora_A.weight"; some savers keep the adapter's name
# ("...lora_A.default.weight"). Both mean the same module.
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>A|B)(?:\.[^.]+)?\.weight$")
# init_lora_weights values that only set the starting weights: the saved adapter is a plain LoRA.
# Others (pissa, olora, corda, loftq) change the base weights too, which no exporter can carry.
_PLAIN_INITS = {"gaussian", "eva", "orthogonal", "mica", "lora_ga"}


@dataclass(frozen=True)
class LoraModule:
    name: str           # the base module, e.g. model.layers.0.self_attn.q_proj
    rank: int
    in_features: int
    out_features: int
    a_key: str          # tensor names in the adapter's weight file
    b_key: str

    @property
    def kind(self) -> str:
        """The module's last name part: q_proj, down_proj, ..."""
        return self.name.rsplit(".", 1)[-1]


@dataclass
class Adapter:
    path: Path
    config: dict[str, Any]
    weights_file: Path
    modules: dict[str, LoraModule]
    other_keys: list[str] = field(default_factory=list)  # tensors that are not a linear layer's A/B

    # -- the config ------------------------------------------------------------------------
    @property
    def base_ref(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", self.rank))

    @property
    def max_rank(self) -> int:
        return max([self.rank, *(m.rank for m in self.modules.values())])

    def scaling(self, module: str) -> float:
        """What peft multiplies ``B @ A`` by for ``module``: alpha / r (alpha / sqrt(r) with
        rsLoRA), with ``rank_pattern`` / ``alpha_pattern`` overrides matched as peft matches them."""
        rank = _match(self.config.get("rank_pattern") or {}, module) or self.rank
        alpha = _match(self.config.get("alpha_pattern") or {}, module) or self.alpha
        return alpha / (math.sqrt(rank) if self.config.get("use_rslora") else rank)

    def unsupported_features(self, target: str) -> list[str]:
        """Adapter features that ``target`` (vLLM, llama.cpp) cannot run, in words."""
        cfg = self.config
        problems = []
        if cfg.get("use_dora"):
            problems.append("DoRA (use_dora = true)")
        if cfg.get("lora_bias"):
            problems.append("LoRA bias vectors (lora_bias = true)")
        if cfg.get("bias", "none") != "none":
            problems.append(f"trained base biases (bias = {cfg['bias']!r})")
        if cfg.get("modules_to_save"):
            problems.append(f"fully trained modules (modules_to_save = {cfg['modules_to_save']})")
        init = cfg.get("init_lora_weights", True)
        if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
            problems.append(f"init_lora_weights = {init!r}, which also changes the base weights "
                            "(convert it to a plain LoRA with peft first)")
        if cfg.get("layer_replication"):
            problems.append("layer_replication")
        if cfg.get("alora_invocation_tokens"):
            problems.append("activated LoRA (alora_invocation_tokens)")
        if cfg.get("use_qalora"):
            problems.append("QALoRA (use_qalora = true)")
        if cfg.get("fan_in_fan_out"):
            problems.append("fan_in_fan_out = true (Conv1D layers)")
        if self.other_keys:
            shown = ", ".join(self.other_keys[:3]) + (" ..." if len(self.other_keys) > 3 else "")
            problems.append(f"weights that are not LoRA pairs of linear layers ({shown}); embedding and "
                            "lm_head adapters are not supported")
        return [f"{target} cannot run {p}" for p in problems]

    # -- the weights -----------------------------------------------------------------------
    def load_tensors(self) -> dict[str, Any]:
        """All tensors of the weight file, as torch tensors, under their file names."""
        import torch

        if self.weights_file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(self.weights_file))
        return torch.load(self.weights_file, map_location="cpu", weights_only=True)


def _match(pattern: dict[str, Any], module: str) -> Any:
    """peft's rule: a key matches when it is a suffix of the module name at a '.' boundary."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def load_adapter(folder: str | Path) -> Adapter:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ExportError(f"adapter folder {path} does not exist" if not path.exists()
                          else f"{path} is not a folder; --adapter takes a peft adapter folder")
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise ExportError(f"{path} is not a peft adapter folder: {ADAPTER_CONFIG} is missing")
    try:
        config = json.loads(config_file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{config_file}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_file}, line {exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(config, dict):
        raise ExportError(f"{config_file}: expected a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{config_file}: peft_type is {config.get('peft_type')!r}; only LoRA adapters export")
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        raise ExportError(f"{config_file}: 'r' (the LoRA rank) must be a positive integer, got {config.get('r')!r}")

    weights = next((path / f for f in (SAFETENSORS, PICKLED) if (path / f).is_file()), None)
    if weights is None:
        raise ExportError(f"{path}: no adapter weights: expected {SAFETENSORS} (or {PICKLED})")
    shapes = _tensor_shapes(weights)
    modules, others = _group(shapes, weights)
    if not modules:
        raise ExportError(f"{weights}: no LoRA weights (no '*.lora_A.weight' / '*.lora_B.weight' tensors)")
    return Adapter(path=path, config=config, weights_file=weights, modules=modules, other_keys=others)


def _tensor_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    try:
        if weights.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
        import torch

        return {k: tuple(v.shape) for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}
    except Exception as exc:  # noqa: BLE001 (safetensors and torch raise unrelated types for a bad file)
        raise ExportError(f"{weights}: cannot read the adapter weights: {exc}") from None


def _group(shapes: dict[str, tuple[int, ...]], weights: Path) -> tuple[dict[str, LoraModule], list[str]]:
    halves: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    others = []
    for key, shape in shapes.items():
        m = _LORA_KEY.match(key)
        if m is None:
            others.append(key)
            continue
        halves.setdefault(m["module"], {})[m["ab"]] = (key, shape)
    modules = {}
    for name, pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise ExportError(f"{weights}: module {name} has no {missing} weight; the file is incomplete")
        (a_key, a), (b_key, b) = pair["A"], pair["B"]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise ExportError(f"{weights}: module {name}: lora_A {list(a)} and lora_B {list(b)} do not "
                              "form a low-rank pair (expected (r, in) and (out, r))")
        modules[name] = LoraModule(name=name, rank=a[0], in_features=a[1], out_features=b[0], a_key=a_key, b_key=b_key)
    return modules, sorted(others)


# -- the base model ---------------------------------------------------------------------------------

@dataclass
class BaseModel:
    path: Path
    config: dict[str, Any]

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else self.model_type

    def weight_files(self) -> list[Path]:
        single = self.path / "model.safetensors"
        if single.is_file():
            return [single]
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            names = sorted(set(json.loads(index.read_text("utf-8"))["weight_map"].values()))
            return [self.path / n for n in names]
        raise ExportError(f"base model {self.path}: no model.safetensors (or sharded index); "
                          "only safetensors checkpoints are read")

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        from safetensors import safe_open

        shapes = {}
        for file in self.weight_files():
            with safe_open(str(file), framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
        return shapes


def resolve_base(adapter: Adapter | None, override: str | None) -> BaseModel:
    """The base model folder: ``override`` (--base-model), else the adapter's
    ``base_model_name_or_path``; a Hugging Face id is looked up in the local cache only."""
    ref = override or (adapter.base_ref if adapter else None)
    if not ref:
        raise ExportError("no base model: the adapter's adapter_config.json has no base_model_name_or_path; "
                          "pass --base-model DIR")
    whence = "--base-model" if override else f"{ADAPTER_CONFIG}'s base_model_name_or_path"
    path = Path(ref).expanduser()
    if not path.exists():
        path = _from_hf_cache(ref)
        if path is None:
            raise ExportError(f"base model {ref!r} (from {whence}) is neither a folder nor a Hugging Face model "
                              "in the local cache; pass --base-model DIR (a local copy of the base model)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ExportError(f"base model {path} (from {whence}) has no config.json; is it a Hugging Face model folder?")
    try:
        config = json.loads(config_file.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_file}, line {exc.lineno}: invalid JSON: {exc.msg}") from None
    return BaseModel(path=path, config=config)


def _from_hf_cache(ref: str) -> Path | None:
    if ref.count("/") != 1 or ref.startswith(("/", ".", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # noqa: BLE001 (not cached, or no huggingface_hub: either way no local copy)
        return None


def check_fits(adapter: Adapter, base: BaseModel) -> None:
    """Every LoRA module must sit on a base weight of shape (out, in); else the adapter was
    trained on another model and any export of it would be garbage (or crash the server)."""
    shapes = base.weight_shapes()
    problems = []
    for m in adapter.modules.values():
        have = shapes.get(f"{m.name}.weight")
        if have is None:
            problems.append(f"{m.name}: the base has no such layer")
        elif tuple(have) != (m.out_features, m.in_features):
            problems.append(f"{m.name}: the adapter expects a weight of shape ({m.out_features}, {m.in_features}), "
                            f"the base has {tuple(have)}")
    if problems:
        shown = "\n  ".join(problems[:5]) + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ExportError(f"the adapter {adapter.path} does not fit the base model {base.path} "
                          f"({len(problems)} of {len(adapter.modules)} modules):\n  {shown}\n"
                          "It was trained on another base; pass the right one with --base-model.")
