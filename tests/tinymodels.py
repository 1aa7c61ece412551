"""Tiny random-weight transformers built from code, for tests that must not download anything.

Every builder is deterministic (fixed seed) and small enough to run a forward pass in
milliseconds. Norm gains and biases are randomised on purpose: freshly initialised norms
are all-ones / all-zeros, which would let a test pass even when an adapter forgot to fold
a gain into a weight.

``tiny_tokenizer()`` is a byte-level BPE trained from code on Python's bundled
documentation, so it encodes any text and works offline; ``save_tiny_model()`` writes a
model and that tokenizer to a directory that ``from_pretrained`` (and ``ingest.models``)
load with no network.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

VOCAB_SIZE = 512
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# gated-MLP (SwiGLU / GeGLU) families that share the Llama layout; ingest.adapters supports all of them
GATED_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma")


def _randomise_norms(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if not name or "norm" not in type(module).__name__.lower():
                continue
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                # Gemma stores gain-1 (zeros at init); everyone else stores the gain (ones at init)
                weight.add_(0.5 * torch.randn(weight.shape, generator=gen))
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.add_(0.1 * torch.randn(bias.shape, generator=gen))
    return model.eval()


def tiny_gpt2(seed: int = 0, n_layers: int = 2, d_model: int = 32, vocab_size: int = VOCAB_SIZE) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=128,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=4,
        n_inner=4 * d_model,
        bos_token_id=0,
        eos_token_id=1,
    )
    return _randomise_norms(GPT2LMHeadModel(config), seed)


def tiny_llama(
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 32,
    d_mlp: int = 96,
    vocab_size: int = VOCAB_SIZE,
    model_type: str = "llama",
    tie_word_embeddings: bool = True,
) -> PreTrainedModel:
    """A Llama-layout model; ``model_type`` picks any of ``GATED_TYPES`` (same shapes, own modules)."""
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=d_model // 4,
        max_position_embeddings=128,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    config = AutoConfig.for_model(model_type, **kwargs)
    model = AutoModelForCausalLM.from_config(config)
    return _randomise_norms(model, seed)


def tiny_neox(
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 32,
    vocab_size: int = VOCAB_SIZE,
    use_parallel_residual: bool = True,
) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=4 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        max_position_embeddings=128,
        use_parallel_residual=use_parallel_residual,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )
    return _randomise_norms(GPTNeoXForCausalLM(config), seed)


BUILDERS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "gpt_neox": tiny_neox}


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    # Trained, not hand-written, so it splits real prose into realistic sub-word pieces.
    # BPE training in `tokenizers` is deterministic for a fixed input, so the vocabulary
    # (and the tokenizer_id derived from it) is the same on every run.
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [topics[key] for key in sorted(topics)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],  # ids 0, 1, 2: matches the tiny configs
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = VOCAB_SIZE, add_bos: bool = False) -> PreTrainedTokenizerFast:
    """The trained tiny BPE; ``add_bos=True`` makes it prepend BOS like Llama-2 / Gemma tokenizers do."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(_tokenizer_json(vocab_size))
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def save_tiny_model(
    directory: str | Path,
    family: str = "llama",
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    **kwargs,
) -> Path:
    """Write a tiny model of ``family`` (a key of ``BUILDERS``) plus a tokenizer to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = BUILDERS[family](seed=seed, **kwargs)
    model.save_pretrained(directory)
    (tokenizer or tiny_tokenizer(model.config.vocab_size)).save_pretrained(directory)
    return directory
