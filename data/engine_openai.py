"""``data.engine=openai``: the target generates behind any OpenAI-compatible server (``vllm serve``, SGLang,
llama.cpp's server), ``data.openai.concurrency`` requests in flight.

Each assistant turn is one ``/v1/completions`` request whose prompt is the conversation's token ids (so the
server reads exactly the context the dataset records) and whose answer comes back as token ids (vLLM's
``return_token_ids``; a server without it returns text, re-encoded here). Either way the ids must decode to
the server's text with the target's tokenizer, which catches a server that serves another model or tokenizer
before it writes a wrong ``loss_mask``. The served model name is checked against ``/v1/models`` before any
generation. Connection errors, 429 and 5xx are retried with exponential backoff; after
``data.openai.max_retries`` one error says what failed, and the shards already committed stay for the rerun.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx
import torch
from transformers import PreTrainedTokenizerBase

from selfspec.data.rollout import Output, finish_output
from selfspec.utils import SelfspecError

logger = logging.getLogger(__name__)


class _Retryable(Exception):
    """A failure worth retrying: the server is busy, restarting or briefly unreachable."""


class OpenAIEngine:
    """``generate`` answers token prompts through a running server's ``/v1/completions``."""

    name = "openai"

    def __init__(self, settings: Any, tokenizer: PreTrainedTokenizerBase, stop_ids: Sequence[int]) -> None:
        self.s, self.tok, self.stops = settings, tokenizer, list(stop_ids)
        self.base = str(settings.base_url).rstrip("/")
        key = settings.api_key or os.environ.get("OPENAI_API_KEY")
        self.client = httpx.Client(
            base_url=self.base,
            timeout=float(settings.timeout_s),
            headers={"Authorization": f"Bearer {key}"} if key else {},
            limits=httpx.Limits(max_connections=max(1, int(settings.concurrency))),
        )
        self.abort = threading.Event()  # set when one request has failed for good: the others stop retrying
        self.model = self._served_model(settings.model)
        logger.info("generating with %s at %s", self.model, self.base)

    def _served_model(self, name: str | None) -> str:
        served = [m.get("id") for m in self._request("GET", "/models").get("data", [])]
        if name is None and len(served) == 1:
            return served[0]
        if name is None or name not in served:
            what = "several models" if name is None else f"no model named {name!r}"
            raise SelfspecError(
                f"the server at {self.base} serves {what} (it serves {served}): set data.openai.model to the "
                "name it serves the target under"
            )
        return name

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        """One request, retried on connection errors, 429 and 5xx with exponential backoff."""
        tries, last = int(self.s.max_retries) + 1, None
        for attempt in range(tries):
            if self.abort.is_set():
                raise SelfspecError("another request failed first")
            try:
                r = self.client.request(method, path, json=payload)
                if r.status_code == 429 or r.status_code >= 500:
                    raise _Retryable(f"HTTP {r.status_code}: {r.text[:200]}")
                if r.status_code >= 400:
                    raise SelfspecError(
                        f"the server at {self.base} refused {path} (HTTP {r.status_code}: {r.text[:200]}); "
                        "check data.openai and that the server runs the target"
                    )
                return r.json()
            except (httpx.TransportError, _Retryable) as e:
                last = e
                if attempt + 1 < tries:
                    self.abort.wait(float(self.s.backoff_s) * 2**attempt)
        raise SelfspecError(
            f"the server at {self.base} failed {path} {tries} times (last: {type(last).__name__}: {last}); the "
            "shards already written are kept: restart the server and rerun to resume"
        )

    def _complete(
        self, ids: Sequence[int], max_new: int, temperature: float, top_p: float, stops, seed
    ) -> Output:
        payload = {
            "model": self.model,
            "prompt": list(ids),
            "max_tokens": max_new,
            "temperature": float(temperature),
            "top_p": float(top_p) if temperature > 0 else 1.0,
            "stop_token_ids": list(stops),
            "ignore_eos": True,  # the stop ids are the only ones (Magpie stops at the end of a user turn)
            "skip_special_tokens": False,
            "return_token_ids": True,
        }
        if temperature > 0:
            payload["seed"] = seed
        choice = self._request("POST", "/completions", payload)["choices"][0]
        text = choice.get("text") or ""
        new = choice.get("token_ids")
        if new is None:  # a server without return_token_ids: the target's own encoding of its text
            new = self.tok(text, add_special_tokens=False)["input_ids"]
        self._check(list(new), text, stops)
        reason = choice.get("stop_reason")
        return finish_output(
            list(new),
            choice.get("finish_reason") == "stop",
            stops,
            reason if isinstance(reason, int) else None,
        )

    def _check(self, new: list[int], text: str, stops: Sequence[int]) -> None:
        """The answer's ids decode to its text with the target's tokenizer (a stop token's text aside)."""
        if any(not 0 <= t < len(self.tok) for t in new):
            bad = next(t for t in new if not 0 <= t < len(self.tok))
            raise SelfspecError(
                f"the server at {self.base} returned token id {bad}, outside the target tokenizer's "
                f"{len(self.tok)} ids: it serves another model than the target; serve the target"
            )
        body = [t for t in new if t not in set(stops)]
        decoded = self.tok.decode(body, skip_special_tokens=False)
        if decoded != text and not text.startswith(decoded):
            raise SelfspecError(
                f"the server at {self.base} answered {text[:60]!r} with token ids that decode to "
                f"{decoded[:60]!r} with the target's tokenizer: it serves another model or tokenizer; serve "
                "the target"
            )

    def close(self) -> None:
        self.client.close()

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        on_done: Callable[[int, Output], None] | None = None,
        stop_ids: Sequence[int] | None = None,
    ) -> list[Output]:
        """Answer every prompt, ``concurrency`` requests at a time; ``on_done`` fires as each one completes."""
        if not prompts:
            return []
        stops = list(self.stops if stop_ids is None else stop_ids)
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()  # from the builder's per-shard seed
        outputs: list[Output | None] = [None] * len(prompts)
        with ThreadPoolExecutor(
            max(1, int(self.s.concurrency)), thread_name_prefix="selfspec-openai"
        ) as pool:
            futures: dict[Future, int] = {
                pool.submit(self._complete, p, max_new_tokens, temperature, top_p, stops, seeds[i]): i
                for i, p in enumerate(prompts)
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is not None:
                        self.abort.set()
                        for other in pending:
                            other.cancel()
                        raise f.exception()
                    outputs[futures[f]] = f.result()
                    if on_done is not None:
                        on_done(futures[f], outputs[futures[f]])
        return outputs  # type: ignore[return-value]
