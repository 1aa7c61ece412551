"""Model loading: local directories of tiny models (fast, offline) and, once, the bundled SmolLM2."""

from __future__ import annotations

import codecs
import json
import shutil

import pytest
import torch

from ingest.models import BUNDLED, LoadedModel, _piece_bytes, _resolve, fingerprint, load_model, resolve_device, token_texts
from kb.errors import IngestError
from tinymodels import save_tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "llama": save_tiny_model(root / "tiny-llama", "llama", seed=0),
        "llama-seed1": save_tiny_model(root / "tiny-llama-b", "llama", seed=1),
        "gpt2": save_tiny_model(root / "tiny-gpt2", "gpt2", seed=0),
        "neox-other-vocab": save_tiny_model(
            root / "tiny-neox", "gpt_neox", seed=0, vocab_size=300, tokenizer=tiny_tokenizer(300)
        ),
    }


@pytest.fixture(scope="module")
def llama(dirs) -> LoadedModel:
    return load_model(str(dirs["llama"]))


def test_load_from_directory(llama, dirs):
    assert llama.name == "tiny-llama"  # the directory's name
    assert llama.source == str(dirs["llama"].resolve())
    assert not llama.model.training
    assert llama.model.dtype == torch.float32
    assert llama.architecture == "llama"
    assert llama.adapter.name == "llama" and llama.adapter.model is llama.model
    assert llama.adapter.n_layers == 2 and llama.adapter.d_mlp == 96
    assert llama.tokenizer("the quick fox")["input_ids"]
    config = json.loads(llama.config_json)
    assert config["model_type"] == "llama" and config["intermediate_size"] == 96
    assert not any(key.startswith("_") for key in config)  # no local paths or loader bookkeeping
    assert llama.tokenizer_id.startswith("tok-512-") and len(llama.tokenizer_id) == len("tok-512-") + 8
    assert llama.fingerprint.startswith("fp-") and len(llama.fingerprint) == 3 + 16


def test_name_override_and_relative_path(dirs, monkeypatch):
    monkeypatch.chdir(dirs["gpt2"].parent)
    lm = load_model("./tiny-gpt2", name="my-gpt2")
    assert lm.name == "my-gpt2"
    assert lm.source == str(dirs["gpt2"].resolve())
    assert lm.adapter.name == "gpt2"


def test_same_model_same_ids_wherever_and_however_loaded(llama, dirs, tmp_path):
    again = load_model(str(dirs["llama"]))
    assert (again.fingerprint, again.tokenizer_id) == (llama.fingerprint, llama.tokenizer_id)
    copy = shutil.copytree(dirs["llama"], tmp_path / "elsewhere")
    moved = load_model(str(copy))
    assert moved.name == "elsewhere"
    assert (moved.fingerprint, moved.tokenizer_id) == (llama.fingerprint, llama.tokenizer_id)
    half = load_model(str(dirs["llama"]), dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16
    assert half.fingerprint == llama.fingerprint  # the weights' identity, not their storage


def test_different_weights_different_fingerprint_shared_tokenizer_same_id(llama, dirs):
    other = load_model(str(dirs["llama-seed1"]))
    assert other.fingerprint != llama.fingerprint
    assert other.tokenizer_id == llama.tokenizer_id
    gpt2 = load_model(str(dirs["gpt2"]))
    assert gpt2.fingerprint != llama.fingerprint
    assert gpt2.tokenizer_id == llama.tokenizer_id  # same vocabulary, different architecture


def test_different_vocabulary_different_tokenizer_id(llama, dirs):
    neox = load_model(str(dirs["neox-other-vocab"]))
    assert neox.adapter.name == "gpt_neox" and neox.adapter.vocab_size == 300
    assert neox.tokenizer_id.startswith("tok-300-")
    assert neox.tokenizer_id != llama.tokenizer_id


def test_fingerprint_sees_a_single_changed_weight(llama):
    model = llama.model
    before = fingerprint(model)
    with torch.no_grad():
        model.model.norm.weight[0] += 1.0  # the first element is always among the samples
    try:
        assert fingerprint(model) != before
    finally:
        with torch.no_grad():
            model.model.norm.weight[0] -= 1.0
    assert fingerprint(model) == before


def test_unknown_name_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IngestError) as err:
        load_model("no-such-org/no-such-model")
    assert str(err.value) == (
        "unknown model 'no-such-org/no-such-model' "
        "(offline: bundled models are smollm2-135m; or pass a local directory or .gguf file)"
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ("./missing-dir", "no such model file or directory: ./missing-dir"),
        ("missing/model.gguf", "no such model file or directory: missing/model.gguf"),
        ("a/b/c", "no such model file or directory: a/b/c"),
    ],
)
def test_missing_paths(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IngestError, match="^" + message):
        load_model(spec)


def test_a_file_that_is_not_gguf(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(IngestError, match="is a file but not a .gguf model"):
        load_model(str(weights))


def test_a_damaged_gguf_file(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 12)
    with pytest.raises(IngestError, match=f"^cannot load model from {junk}: "):
        load_model(str(junk))
    junk.write_bytes(b"not a gguf file at all, just some bytes that go on for a while" * 4)
    with pytest.raises(IngestError, match=f"^cannot load model from {junk}: "):
        load_model(str(junk))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_load_has_the_cpu_fingerprint(llama, dirs):
    lm = load_model(str(dirs["llama"]), device="cuda", dtype="bfloat16")
    assert lm.device.type == "cuda" and lm.model.dtype == torch.bfloat16
    assert lm.fingerprint == llama.fingerprint
    assert lm.adapter.w_out(0).device.type == "cuda"
    assert lm.adapter.fold_final_norm(torch.ones(1, lm.adapter.d_model, device="cuda")).device.type == "cuda"


def test_a_directory_without_a_model(tmp_path):
    with pytest.raises(IngestError, match="holds no config.json and no single .gguf file"):
        load_model(str(tmp_path))


def test_unsupported_architecture_is_refused_before_loading_weights(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    # no weights and no tokenizer in the directory: the config alone must decide
    with pytest.raises(IngestError, match="unsupported architecture 'bert'.*supported are gpt2, llama"):
        load_model(str(tmp_path))


def test_bad_dtype_and_device(dirs):
    with pytest.raises(IngestError, match="unknown dtype 'float8'"):
        load_model(str(dirs["llama"]), dtype="float8")
    with pytest.raises(IngestError, match="unknown device 'tpu-ish'"):
        resolve_device("tpu-ish")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(IngestError, match="CUDA is not available"):
            resolve_device("cuda")


def test_bundled_and_gguf_paths_resolve_without_loading():
    gguf = BUNDLED["smollm2-135m"].path()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.is_file()
    source, name, args = _resolve("smollm2-135m")
    assert (source, name) == ("smollm2-135m", "smollm2-135m")
    assert args == {"location": str(gguf.parent), "gguf_file": gguf.name}
    source, name, args = _resolve(str(gguf))
    assert (source, name) == (str(gguf), "SmolLM2-135M-Instruct.Q4_1")
    assert args["gguf_file"] == gguf.name and args["local_files_only"] is True


@pytest.mark.slow
def test_bundled_smollm2_loads_and_predicts():
    lm = load_model("smollm2-135m")
    a = lm.adapter
    assert (lm.name, lm.source, lm.architecture, a.name) == ("smollm2-135m", "smollm2-135m", "llama", "llama")
    assert (a.n_layers, a.d_model, a.d_mlp, a.vocab_size) == (30, 576, 1536, 49152)
    assert lm.tokenizer_id.startswith("tok-49152-")
    assert lm.model.get_output_embeddings().weight is lm.model.get_input_embeddings().weight
    assert fingerprint(lm.model) == lm.fingerprint

    ids = lm.tokenizer("My favourite animal is the", return_tensors="pt", add_special_tokens=False).input_ids
    seen = {}
    handle = a.neuron_module(12).register_forward_pre_hook(lambda m, args: seen.__setitem__("acts", args[0]))
    try:
        with torch.no_grad():
            logits = lm.model(ids).logits[0, -1]
    finally:
        handle.remove()
    top = [lm.tokenizer.decode(int(i)).strip() for i in logits.topk(10).indices]
    assert {"cat", "dog"} <= set(top), top
    assert seen["acts"].shape == (1, ids.shape[1], 1536)
    # the adapter's weights are the real ones: the layer-12 MLP output is acts @ w_out
    with torch.no_grad():
        out = a.neuron_module(12)(seen["acts"])
    torch.testing.assert_close(seen["acts"] @ a.w_out(12), out, atol=1e-4, rtol=1e-4)
    # LM-head decoding direction works end to end: the unembedding of " cat" promotes " cat"
    cat = lm.tokenizer(" cat", add_special_tokens=False).input_ids
    assert len(cat) == 1
    logits_of_cat = a.unembed() @ a.fold_final_norm(a.unembed()[cat])[0]
    assert int(logits_of_cat.argmax()) == cat[0]


def test_tokens_that_split_a_character_are_spelled_by_their_bytes():
    tok = load_model("smollm2-135m").tokenizer
    texts = token_texts(tok, range(len(tok)))
    plain = [tok.decode([i]) for i in range(len(tok))]
    broken = {i for i, text in enumerate(plain) if "\ufffd" in text}
    assert len(broken) > 100  # byte-level BPE: hundreds of tokens hold part of a character
    assert all(texts[i] == plain[i] for i in range(len(tok)) if i not in broken)
    # Only the token that is U+FFFD itself keeps the replacement character.
    assert [i for i, text in enumerate(texts) if "\ufffd" in text] == tok.encode("\ufffd", add_special_tokens=False)
    assert len({texts[i] for i in broken}) == len(broken)  # a text of their own each
    # The bytes the texts spell are the text's bytes, split or not.
    text = "’ café, naïve 中文 🙂 → ∑"
    ids = tok.encode(text, add_special_tokens=False)
    spelled = token_texts(tok, ids)
    assert any("\\x" in s for s in spelled), spelled
    assert b"".join(codecs.escape_decode(s.encode("utf-8"))[0] for s in spelled) == text.encode("utf-8")


def test_byte_pieces_are_read_as_bytes():
    assert _piece_bytes("<0xE2>") == b"\xe2"  # SentencePiece byte fallback
    assert _piece_bytes("âĢ") == b"\xe2\x80"  # byte-level BPE
    assert _piece_bytes("▁caf") is None and _piece_bytes("") is None and _piece_bytes(None) is None


@pytest.mark.slow
def test_a_gguf_is_converted_once_and_the_conversion_holds_the_gguf(tmp_path, monkeypatch):
    import ingest.models as models

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    gguf = BUNDLED["smollm2-135m"].path()
    lm = load_model("smollm2-135m")
    converted = list((tmp_path / "neuron-kb" / "models").iterdir())
    assert [p.name.startswith("SmolLM2-135M-Instruct.Q4_1-") for p in converted] == [True]
    # What transformers reads from the GGUF itself, without the cache.
    direct, tokenizer = models._load_pretrained(str(gguf.parent), torch.float32, gguf_file=gguf.name)
    got = lm.model.state_dict()
    for name, tensor in direct.state_dict().items():
        assert torch.equal(got[name], tensor), name
    assert models.fingerprint(direct) == lm.fingerprint
    # The same config, less the marker of GGUF quantization (the weights are plain floats now).
    assert {k: v for k, v in json.loads(models.config_json(direct)).items() if k != "quantization_config"} \
        == json.loads(lm.config_json)
    text = "def f(x):\n    return x  # ünïcode <|endoftext|>"
    assert tokenizer(text).input_ids == lm.tokenizer(text).input_ids
    # A second load reads the converted directory and never parses the GGUF.
    real = models._load_pretrained
    monkeypatch.setattr(models, "_load_pretrained", lambda location, dtype, **kw: (
        pytest.fail("the GGUF was parsed again") if "gguf_file" in kw else real(location, dtype, **kw)))
    again = load_model("smollm2-135m", dtype="bfloat16")
    assert again.fingerprint == lm.fingerprint and again.model.dtype == torch.bfloat16
    assert list((tmp_path / "neuron-kb" / "models").iterdir()) == converted
