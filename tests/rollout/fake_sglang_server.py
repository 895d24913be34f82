"""A stand-in for `python -m sglang.launch_server` in tests (SGLang needs a GPU): a real HTTP server
process taking the same command line and answering the endpoints our adapter uses, with SGLang's
answer shapes. Every request body is appended to <record_dir>/<port>.jsonl for the tests to check
against SGLang's request types. Behaviours for the failure paths:
  --hang-health     never answer /health (start-up time-out)
  --exit-at-start   exit with code 3 at once (crash while starting)
  POST /_die        exit at once without answering (a crashed engine)
  --generate-delay-s S   answer each /generate S seconds late (a slow engine)
  --refuse-generate      answer /generate 400 (a request the server refuses)
  --boxed-answers        each sample's text is a formatted answer, \boxed{first token id mod 7}
Weight updates follow SGLang 0.5.23's session contract (scheduler_components/weight_updater.py):
/update_weights_from_tensor and /update_weights_from_distributed answer 400 outside a /begin_weight_update
... /end_weight_update session; a second begin, or an end without a begin, answers 400 too.
Generation is deterministic: sample j of a row answers prompt[-1]+1+j, ... (max_new_tokens tokens,
finish "length"), logprob -0.5 per token.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OK_PATHS = {
    "/update_weights_from_tensor",
    "/update_weights_from_distributed",
    "/init_weights_update_group",
    "/destroy_weights_update_group",
    "/pause_generation",
    "/continue_generation",
    "/flush_cache",
    "/release_memory_occupation",
    "/resume_memory_occupation",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tp-size", type=int, default=1)
    ap.add_argument("--mem-fraction-static", type=float)
    ap.add_argument("--base-gpu-id", type=int)
    ap.add_argument("--dtype")
    ap.add_argument("--random-seed", type=int)
    ap.add_argument("--enable-memory-saver", action="store_true")
    ap.add_argument("--device")
    ap.add_argument("--disable-overlap-schedule", action="store_true")
    ap.add_argument("--skip-server-warmup", action="store_true")
    ap.add_argument("--enable-deterministic-inference", action="store_true")
    ap.add_argument("--max-total-tokens", type=int)
    ap.add_argument("--record-dir", required=True)
    ap.add_argument("--hang-health", action="store_true")
    ap.add_argument("--exit-at-start", action="store_true")
    ap.add_argument("--generate-delay-s", type=float, default=0.0)
    ap.add_argument("--refuse-generate", action="store_true")
    ap.add_argument("--boxed-answers", action="store_true")
    args = ap.parse_args()
    if args.exit_at_start:
        raise SystemExit(3)
    record = Path(args.record_dir) / f"{args.port}.jsonl"
    vocab = 1000  # generated ids stay inside the served model's vocabulary when it has a config
    config = Path(args.model_path) / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        vocab = c.get("text_config", {}).get("vocab_size") or c.get("vocab_size") or vocab

    session = {"open": False}

    def log(path: str, body) -> None:
        with open(record, "a") as f:
            f.write(json.dumps({"path": path, "body": body, "pid": os.getpid()}) + "\n")

    log("/_start", {"argv": os.sys.argv[1:]})

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def _answer(self, code: int, body=None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                if args.hang_health:
                    time.sleep(3600)
                self._answer(200)
            else:
                self._answer(404, {"detail": "Not Found"})

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(n) or b"null")
            log(self.path, body)
            if self.path == "/_die":
                os._exit(1)
            if self.path == "/generate":
                time.sleep(args.generate_delay_s)
                if args.refuse_generate:
                    self._answer(400, {"error": {"message": "refused", "type": "BadRequestError"}})
                    return
                single = isinstance(body["sampling_params"], dict)  # one request (e.g. from sglang-router)
                if single:
                    body = {
                        **body,
                        "input_ids": [body["input_ids"]],
                        "sampling_params": [body["sampling_params"]],
                    }
                rows = []
                for k, (ids, sp) in enumerate(zip(body["input_ids"], body["sampling_params"])):
                    out = [(ids[-1] + 1 + k + i) % vocab for i in range(sp["max_new_tokens"])]
                    rows.append(
                        {
                            "text": f"<think>w</think><answer>\\boxed{{{out[0] % 7}}}</answer>"
                            if args.boxed_answers
                            else " ".join(f"w{t}" for t in out),
                            "output_ids": out,
                            "meta_info": {
                                "id": f"{args.port}-{k}",
                                "finish_reason": {"type": "length", "length": len(out)},
                                "output_token_logprobs": [[-0.5, t, None] for t in out],
                            },
                        }
                    )
                self._answer(200, rows[0] if single else rows)
            elif self.path == "/begin_weight_update":
                if session["open"]:
                    msg = "a weight-update session is already open; call end_weight_update() first"
                    self._answer(400, {"success": False, "message": msg})
                else:
                    session["open"] = True
                    self._answer(200, {"success": True, "message": "Success"})
            elif self.path == "/end_weight_update":
                if not session["open"]:
                    msg = "no weight-update session is open; call begin_weight_update() first"
                    self._answer(400, {"success": False, "message": msg})
                else:
                    session["open"] = False
                    self._answer(200, {"success": True, "message": "Success"})
            elif (
                self.path in ("/update_weights_from_tensor", "/update_weights_from_distributed")
                and not session["open"]
            ):
                msg = f"{self.path[1:]} must run between begin_weight_update() and end_weight_update()"
                self._answer(400, {"success": False, "message": msg})
            elif self.path in OK_PATHS:
                self._answer(200, {"success": True, "message": "ok"})
            else:
                self._answer(404, {"detail": "Not Found"})

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
