# Run by benchmarks/eval.py in the reference venv (never imports bolmo):
#   PYTHONPATH=../shared/reference $REF_PY benchmarks/eval_reference.py MODEL_DIR BATCH [BATCH...] < rows.json
"""The reference side of the eval benchmark: olmes' hf_bolmo loglikelihood with Ai2's HF Bolmo code.

stdin: {"rows": [[input ids...], ...], "targets": [[first position, [continuation ids]], ...]}.
Each batch size runs right-padded batches with an attention mask (what a harness does with an HF
model); prints {"<batch>": {"seconds": s, "logprobs": [...]}} as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch


def main() -> None:
    if len(sys.argv) < 3 or not all(b.isdigit() for b in sys.argv[2:]):  # `--help`, or run by hand
        sys.exit("internal worker of benchmarks/eval.py, run in the reference's venv: "
                 "eval_reference.py MODEL_DIR BATCH [BATCH...] < rows.json")
    model_dir, batches = sys.argv[1], [int(b) for b in sys.argv[2:]]
    os.chdir(model_dir)  # the config names its subword tokenizer by a relative path
    from refbolmo.modeling_bolmo import BolmoForCausalLM

    model = BolmoForCausalLM.from_pretrained(".").eval()
    job = json.load(sys.stdin)
    rows, targets = job["rows"], job["targets"]
    out = {}
    for batch in batches:
        logprobs = []
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(rows), batch):
                chunk = rows[i : i + batch]
                width = max(len(r) for r in chunk)
                ids = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.long)
                for b, r in enumerate(chunk):
                    ids[b, : len(r)] = torch.tensor(r)
                    mask[b, : len(r)] = 1
                logits = model(ids, attention_mask=mask).logits.float()
                probs = torch.softmax(logits, -1)
                folded = (probs[..., :260] + probs[..., 260:]).log()
                for b, (first, cont) in enumerate(targets[i : i + batch]):
                    positions = torch.arange(first - 1, first - 1 + len(cont))
                    logprobs.append(float(folded[b, positions, torch.tensor(cont)].double().sum()))
        out[str(batch)] = {"seconds": time.perf_counter() - start, "logprobs": logprobs}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
