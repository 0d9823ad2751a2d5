"""Schema of the ``data`` group and of the ``generate`` job (``python data/generate.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from selfspec.config import JobConf, register_core

SYSTEM_PROMPTS = (
    "",
    "You are a coding assistant. Users ask you to write, explain, debug or review code in Python, "
    "JavaScript, SQL, C++ and shell.",
    "You are a math tutor. Users ask you arithmetic, algebra, geometry, probability and word problems "
    "to solve step by step.",
    "You are a writing assistant. Users ask you for emails, stories, poems, summaries, essays and rewrites.",
    "You are a science teacher. Users ask you about physics, chemistry, biology, astronomy and the earth.",
    "You are a knowledgeable guide. Users ask you about history, geography, cultures, art and economics.",
    "You are a practical advisor. Users ask you how to do everyday things: cooking, health, money, travel, "
    "work and study.",
    "You are a reasoning assistant. Users give you puzzles, logic questions, comparisons and decisions to "
    "think through.",
)


@dataclass
class MagpieConf:
    """How the target writes its own prompts (``data.source=self``, the Magpie method).

    Sampling is hotter than for responses so prompts are diverse; a prompt is kept only if the target ended
    the user turn itself, it is printable, within the length bounds and not a duplicate.
    """

    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 96  # token budget for one sampled user message
    min_chars: int = 12
    max_chars: int = 600
    max_attempts_factor: int = 8  # at most factor * num_prompts candidates are sampled
    # Steering system messages, drawn in turn: Magpie asks for prompts of several kinds (code, math, writing,
    # ...) this way; the kept prompts are answered without them. "" stands for the template's default.
    system_prompts: list[str] = field(default_factory=lambda: list(SYSTEM_PROMPTS))
    near_duplicate_jaccard: float = (
        0.6  # word 3-gram Jaccard at which a prompt is a near duplicate (> 1: off)
    )
    # When too few candidates pass the filters (e.g. a random test model writing junk bytes), fill the rest
    # with sanitised, unfinished candidates and warn, instead of failing; false makes that an error.
    relax_on_shortfall: bool = True
    # Dataset folders whose prompts (train and eval) the new ones must not near-duplicate: a second dataset then
    # adds prompts the first lacks, and the first's eval split stays held out from both.
    avoid: list[str] = field(default_factory=list)


@dataclass
class VLLMEngineConf:
    """``data.engine=vllm``: offline ``vllm.LLM`` in this process (``pip install vllm``; see the README).

    Only ``dtype`` and ``max_model_len`` can change what is generated; the parallelism and memory knobs are
    throughput only and stay out of the dataset's key.
    """

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = True  # CUDA graphs help on GPUs (set false there); the CPU backend runs eagerly
    max_model_len: int | None = None  # null: the target's context
    dtype: str = "auto"  # auto: the target's dtype as selfspec resolves it (bf16 where native, else fp32)
    kwargs: dict = field(default_factory=dict)  # any other vllm.LLM argument


@dataclass
class OpenAIEngineConf:
    """``data.engine=openai``: any running OpenAI-compatible server (``vllm serve``, SGLang, llama.cpp).

    Prompts go as token ids to ``/v1/completions`` and the answer's token ids are read back (vLLM's
    ``return_token_ids``), or re-encoded from the text where a server returns none, then checked against the
    target tokenizer. The server must serve the target: its name is checked against ``/v1/models`` first.
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None  # the served model name; null: the server's only model
    api_key: str | None = None  # null: $OPENAI_API_KEY if set
    concurrency: int = 32  # requests in flight
    timeout_s: float = 600.0  # one request
    max_retries: int = 5  # per request, with exponential backoff, before one clear error
    backoff_s: float = 1.0  # first wait; doubles each retry


@dataclass
class DataConf:
    source: str = "self"  # self | jsonl | parquet | hub
    path: str | None = None  # file for jsonl/parquet, dataset id for hub
    hub_split: str = "train"
    num_prompts: int = 64  # conversations in the dataset; for file/hub sources an upper bound (<= 0: all)
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    batch_size: int = 32  # continuous-batching slots
    max_assistant_turns: int = 4  # multi-turn sources: assistant turns regenerated per conversation
    eval_fraction: float = 0.1
    shard_size: int = 256  # conversations per atomically committed shard (the unit of resumption)
    cache_dir: str | None = None  # default: $SELFSPEC_HOME/datasets
    # Ranks wait for each other's commits in cache_dir; after this long without a sign of life from the rank
    # they wait for, they stop with an error (cache_dir not shared between nodes) instead of hanging.
    wait_timeout_s: float = 600.0
    magpie: MagpieConf = field(default_factory=MagpieConf)
    # Who generates: hf (in-process continuous batching), vllm (offline vllm.LLM) or openai (a running server).
    engine: str = "hf"
    vllm: VLLMEngineConf = field(default_factory=VLLMEngineConf)
    openai: OpenAIEngineConf = field(default_factory=OpenAIEngineConf)


@dataclass
class GenerateJobConf(JobConf):
    data: DataConf = field(default_factory=DataConf)


def register_data(cs: ConfigStore | None = None) -> None:
    cs = cs or ConfigStore.instance()
    register_core(cs)
    cs.store(group="data", name="schema", node=DataConf)
    cs.store(name="generate_schema", node=GenerateJobConf)
