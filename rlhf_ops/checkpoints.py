"""Checks of a checkpoint directory that read only its JSON and the safetensors headers: no torch, no
model built, so a bad directory is refused at start-up, in one line naming it, before any work.

What is checked: the directory holds config.json and safetensors weights (not a GGUF conversion's
leftover quantization_config); every weights file's header is intact and the file is as long as the
header says (a truncated copy); no tensor is empty (saved from a ZeRO-3 shard); the weights are the
architecture config.json describes (the embedding's width and rows, the number of layers: a
config.json of another model over the weights would otherwise load as a randomly initialised model);
a tokenizer is there when one is needed; an ensemble's members all exist and pass the same checks.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from .artifacts import InputError

ENSEMBLE_FILE = "ensemble.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Embedding matrices by their usual names (Llama/Mistral/Qwen/SmolLM: embed_tokens; GPT-2: wte).
_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in)\.weight$")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file; InputError if it is cut short or not safetensors."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InputError(f"{path}: {size} bytes, too short to be a safetensors file (a truncated copy?)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100_000_000:
            raise InputError(f"{path}: the safetensors header says {n} bytes of header, the file has {size}: "
                             "truncated or not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: the safetensors header is not valid JSON ({e}): a damaged file") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise InputError(f"{path}: the header describes {8 + n + end} bytes of tensors, the file has {size}: "
                         "truncated (an interrupted download or copy); copy it again")
    return header


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    shapes = {}
    for f in sorted(path.glob("*.safetensors")):
        shapes.update(tensor_shapes(f))
    return shapes


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """The tensors' shapes in one safetensors file; InputError if one is empty: a weight with no elements is
    what a model sharded by DeepSpeed ZeRO-3 saves when its weights were not gathered first (one process's
    view of a weight it holds no shard of), and it would load as a freshly initialised layer."""
    shapes = {name: t["shape"] for name, t in safetensors_header(path).items() if name != "__metadata__"}
    empty = [name for name, shape in shapes.items() if 0 in shape]
    if empty:
        raise InputError(f"{path}: {len(empty)} of its {len(shapes)} tensors are empty (e.g. {empty[0]}, shape "
                         f"{shapes[empty[0]]}): weights saved from one process's ZeRO-3 shard without gathering")
    return shapes


def _check_architecture(path: Path, config: dict, shapes: dict[str, list[int]], what: str) -> None:
    text = config.get("text_config") or config  # multimodal configs nest the language model's
    hidden = text.get("hidden_size") or text.get("n_embd") or text.get("d_model")
    vocab = text.get("vocab_size")
    layers = text.get("num_hidden_layers") or text.get("n_layer") or text.get("num_layers")
    arch = ", ".join(config.get("architectures") or [config.get("model_type", "?")])
    embeddings = [(k, s) for k, s in shapes.items() if _EMBEDDING.search(k) and len(s) == 2]
    if embeddings:
        name, (rows, width) = embeddings[0]
        if hidden and width != hidden:
            raise InputError(f"{what} checkpoint {path}: config.json ({arch}) says hidden_size={hidden}, but the "
                             f"weights' {name} is {rows} x {width}: config.json does not describe these weights")
        if vocab and rows != vocab:
            raise InputError(f"{what} checkpoint {path}: config.json ({arch}) says vocab_size={vocab}, but the "
                             f"weights' {name} has {rows} rows: config.json does not describe these weights")
    found = {int(m.group(1)) for k in shapes for m in [_LAYER.search(k)] if m}
    multimodal = "text_config" in config or "vision_config" in config  # other towers have layers too
    if layers and found and not multimodal and len(found) != layers:
        raise InputError(f"{what} checkpoint {path}: config.json ({arch}) says {layers} layers, the weights hold "
                         f"{len(found)}: config.json does not describe these weights")


def check_checkpoint_dir(path: str | Path, what: str, *, tokenizer: bool = False) -> Path:
    """`path` if it is a loadable checkpoint directory (or an ensemble of them); else InputError."""
    path = Path(path)
    if not str(path) or not path.is_dir():
        raise InputError(f"{what} checkpoint not found: {path} (expected a directory from save_pretrained)")
    if (path / ENSEMBLE_FILE).is_file():
        try:
            members = json.loads((path / ENSEMBLE_FILE).read_text())["members"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{what} ensemble {path / ENSEMBLE_FILE}: not a members list ({e})") from None
        for m in members:
            check_checkpoint_dir(path / m, f"{what} ensemble member '{m}'", tokenizer=tokenizer)
        return path
    from .lora import ADAPTER_CONFIG, check_adapter_dir

    if (path / ADAPTER_CONFIG).is_file():  # a LoRA adapter: its files and its base (rlhf_ops.lora)
        check_adapter_dir(path, what)
        if tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise InputError(f"{what} checkpoint {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
        return path
    if not (path / "config.json").is_file():
        raise InputError(f"{what} checkpoint {path} has no config.json")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{what} checkpoint {path / 'config.json'}: not valid JSON ({e})") from None
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") == "gguf":
        raise InputError(f"{what} checkpoint {path}: config.json still says quantization_config.quant_method=gguf (a "
                         "model converted from a GGUF file); delete the quantization_config entry, so it loads as "
                         "plain weights")
    if not any(path.glob("*.safetensors")):
        raise InputError(f"{what} checkpoint {path} has no .safetensors weights (only safetensors are loaded)")
    try:
        shapes = _tensor_shapes(path)
    except InputError as e:
        raise InputError(f"{what} checkpoint: {e}") from None
    _check_architecture(path, config, shapes, what)
    if tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(f"{what} checkpoint {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
                         "tokenizer into the same directory (tokenizer.save_pretrained)")
    return path
