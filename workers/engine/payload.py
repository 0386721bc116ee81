"""A revision's payload: one safetensors file that PEFT can load unchanged.

The LoRA weights are stored under PEFT's own key names, and the adapter config
rides in the safetensors header metadata (`peft_config`), so a single blob,
one sha256, covers weights and config together. `export_peft_folder` writes
the `adapter_model.safetensors` + `adapter_config.json` pair that
`PeftModel.from_pretrained` (and servers such as vLLM) expect.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

CONFIG_KEY = "peft_config"
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


class PayloadError(ValueError):
    pass


@dataclass(slots=True)
class AdapterPayload:
    tensors: dict  # str -> torch.Tensor, PEFT key names without adapter name
    config: dict  # PEFT LoraConfig as a dict

    @property
    def parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def pack(tensors: dict, config: dict) -> bytes:
    from safetensors.torch import save

    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}
    metadata = {"format": "pt", CONFIG_KEY: json.dumps(config, sort_keys=True)}
    return save(contiguous, metadata=metadata)


def unpack(data: bytes) -> AdapterPayload:
    from safetensors.torch import load

    try:
        tensors = load(data)
        raw = header_metadata(data).get(CONFIG_KEY)
    except Exception as exc:  # safetensors raises several types on bad headers
        raise PayloadError(f"not a MinT adapter payload: {exc}") from exc
    if raw is None:
        raise PayloadError("payload has no peft_config metadata")
    return AdapterPayload(tensors=tensors, config=json.loads(raw))


def header_metadata(data: bytes) -> dict:
    """The safetensors `__metadata__` map, read from the header without a temp file."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    return header.get("__metadata__") or {}


def export_peft_folder(data: bytes, dest: str | os.PathLike) -> Path:
    payload_config = unpack(data).config
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / WEIGHTS_NAME).write_bytes(data)
    (dest / CONFIG_NAME).write_text(json.dumps(payload_config, indent=2, sort_keys=True))
    return dest


def peft_tar_gz(data: bytes, *, readme: str = "") -> bytes:
    """The PEFT folder as a .tar.gz, for download."""
    config = json.dumps(unpack(data).config, indent=2, sort_keys=True).encode()
    members = [(WEIGHTS_NAME, data), (CONFIG_NAME, config)]
    if readme:
        members.append(("README.md", readme.encode()))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()
