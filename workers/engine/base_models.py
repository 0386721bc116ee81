"""Foundation models in local HF folders: their digest, size, and loading.

A base is identified by the sha256 digest of its weight files, not its name or
path: an adapter trained on one digest is refused on another.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors",)


class BaseModelError(RuntimeError):
    pass


def weights_digest(folder: str | os.PathLike) -> str:
    """sha256 over (file name, file sha256) of every weight file, sorted by name."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise BaseModelError(f"{folder} holds no .safetensors weight files")
    outer = hashlib.sha256()
    for path in files:
        outer.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return outer.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe(folder: str | os.PathLike) -> dict:
    """Digest, parameter count and architecture of a local HF causal LM folder."""
    from safetensors import safe_open
    from transformers import AutoConfig

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise BaseModelError(f"{folder} is not a HF model folder (no config.json)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    params = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                params += _numel(handle.get_slice(key).get_shape())
    return {
        "digest": weights_digest(folder),
        "parameters": params,
        "architecture": (config.architectures or [config.model_type])[0],
        "context_length": getattr(config, "max_position_embeddings", None),
    }


def _numel(shape) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


@dataclass(slots=True)
class LoadedBase:
    digest: str
    model: object
    tokenizer: object
    device: str


def save_model_folder(
    model, tokenizer, dest: str | os.PathLike, *, extra: dict[str, str] | None = None
) -> Path:
    """Save a HF model folder atomically: written to a staging folder beside
    `dest`, then renamed over it, so a reader never sees half a base."""
    import shutil
    import tempfile

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=dest.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for name, text in (extra or {}).items():
            (staging / name).write_text(text)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base(folder: str | os.PathLike, digest: str) -> LoadedBase:
    """Load the base at `folder`, refusing it if its weights are not `digest`.

    Each call returns a new instance: training and the serving runtime modify
    modules in place (PEFT injects LoRA layers), so they never share one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    actual = weights_digest(folder)
    if actual != digest:
        raise BaseModelError(
            f"base model at {folder} has digest {actual[:12]}…, expected {digest[:12]}…; "
            "its weights changed since it was registered"
        )
    device = pick_device()
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return LoadedBase(digest=digest, model=model, tokenizer=tokenizer, device=device)
