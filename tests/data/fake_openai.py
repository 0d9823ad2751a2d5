"""A small OpenAI-compatible server for the engine tests: ``/v1/models`` and ``/v1/completions`` answered by a
real model through selfspec's HF engine (greedy and sampled), on 127.0.0.1 in a thread.

Knobs imitate the servers ``data.engine=openai`` meets: ``text_only`` (no ``token_ids``, as llama.cpp),
``stop_in_ids`` (whether the stop token comes back), ``die_after`` (the process goes away after N answers),
``busy`` (the first N requests get a 503), ``wrong_ids`` (ids of another tokenizer).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from selfspec.data.engine_hf import HFEngine


class FakeServer:
    def __init__(self, model, tokenizer, name: str = "target", **knobs) -> None:
        self.engine = HFEngine(model, [tokenizer.eos_token_id], tokenizer.eos_token_id, slots=1)
        self.tok, self.name = tokenizer, name
        self.text_only = knobs.get("text_only", False)
        self.stop_in_ids = knobs.get("stop_in_ids", True)
        self.die_after = knobs.get("die_after")
        self.busy = knobs.get("busy", 0)
        self.wrong_ids = knobs.get("wrong_ids", False)
        self.answered, self.requests, self.lock = 0, 0, threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def complete(self, req: dict) -> dict:
        stops = req.get("stop_token_ids") or [self.tok.eos_token_id]
        temperature = float(req.get("temperature", 1.0))
        with self.lock:
            if "seed" in req:
                torch.manual_seed(int(req["seed"]))
            ((new, stopped),) = self.engine.generate(
                [req["prompt"]],
                int(req["max_tokens"]),
                temperature,
                float(req.get("top_p", 1.0)),
                stop_ids=stops,
            )
        body = new[:-1] if stopped else new
        choice = {
            "index": 0,
            "text": self.tok.decode(body, skip_special_tokens=False),
            "finish_reason": "stop" if stopped else "length",
            "stop_reason": new[-1] if stopped else None,
        }
        if not self.text_only:
            ids = new if self.stop_in_ids else body
            choice["token_ids"] = [t + 1 for t in ids] if self.wrong_ids else ids
        return {"id": "cmpl-0", "object": "text_completion", "model": self.name, "choices": [choice]}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.name, "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    busy = server.requests <= server.busy
                    dead = server.die_after is not None and server.answered >= server.die_after
                if dead:  # the process went away: close without an answer, then stop listening
                    self.close_connection = True
                    threading.Thread(target=server.stop, daemon=True).start()
                    return
                if busy:
                    self._send(503, {"error": "busy"})
                    return
                if req.get("model") != server.name:
                    self._send(404, {"error": f"model {req.get('model')} not found"})
                    return
                out = server.complete(req)
                with server.lock:
                    server.answered += 1
                self._send(200, out)

        return Handler
