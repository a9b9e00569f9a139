# Runs inside the REFERENCE implementation's own venv (never imported by bolmo): started by
# benchmarks/reference.py as a subprocess, it loads an HF model directory with the reference's
# BolmoForCausalLM and answers timing requests, one JSON object per line on stdin/stdout.
"""Reference-side timing worker. Requests: {"op": "generate", "ids": [[...], ...], "new_bytes": N}
and {"op": "forward", "ids": [[...]]}; replies {"seconds": s, ...}."""

from __future__ import annotations

import json
import sys
import time

import torch


def main() -> None:
    if len(sys.argv) != 5:  # `--help`, or run by hand
        sys.exit("internal worker of benchmarks/reference.py, started in the reference's venv: "
                 "reference_worker.py MODEL_DIR THREADS DEVICE DTYPE (requests on stdin)")
    model_dir, threads, device, dtype = sys.argv[1], int(sys.argv[2]), sys.argv[3], getattr(torch, sys.argv[4])
    torch.set_num_threads(threads)
    from refbolmo.modeling_bolmo import BolmoForCausalLM  # the reference's HF code (PYTHONPATH)

    model = BolmoForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        ids = torch.tensor(request["ids"], device=device)
        with torch.no_grad():
            start = time.perf_counter()
            if request["op"] == "generate":
                # The reference's generate returns max_new_tokens + len(prompt ids) - 3 new bytes.
                n = max(1, request["new_bytes"] - ids.shape[1] + 3)  # short requests: at least one step
                out = model.generate(ids, max_new_tokens=n, do_sample=False)
                if device != "cpu":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                reply = {"seconds": seconds, "new_ids": out[:, ids.shape[1]:].tolist()}
                model.model.local_encoder.free_inference_cache()
                model.model.local_decoder.free_inference_cache()
            else:
                model(ids)
                reply = {"seconds": time.perf_counter() - start}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
