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
    """Serialise to safetensors with a canonical layout: the same tensors and
    config always give the same bytes, hence the same sha256. (safetensors'
    own writer does not promise a tensor order.)"""
    metadata = {"format": "pt", CONFIG_KEY: json.dumps(config, sort_keys=True)}
    header: dict = {"__metadata__": metadata}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        data = _tensor_bytes(tensor)
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[str(tensor.dtype)],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)


SAFETENSORS_DTYPES = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float64": "F64",
}


def _tensor_bytes(tensor) -> bytes:
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
        tensor = tensor.view(torch.int16)
    return tensor.numpy().astype(tensor.numpy().dtype.newbyteorder("<"), copy=False).tobytes()


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
