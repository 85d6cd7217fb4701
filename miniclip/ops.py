"""The NumPy reference ops: the spec every faster backend is tested against.

The model (model.py) computes *what* CLIP computes by calling only these functions; a backend supplies
*how fast*. Each is short and obvious on purpose. Shapes: B batch, T tokens, D width, H heads,
d = D / H head width, F the MLP's hidden width.
"""

from __future__ import annotations

import math

import numpy as np

name = "numpy"


# Where arrays live. A GPU backend uploads the weights once and moves inputs and results; for the CPU
# backends these are the identity (to_host: a NumPy array).
def prepare(params):  # {name: array} -> {name: array} as the backend computes with them
    return params


def to_device(x):
    return x


def to_host(x):
    return np.asarray(x)


def linear(x, weight, bias=None, *, act=None, residual=None):  # [..., D_in], [D_out, D_in], [D_out] -> [..., D_out]
    """PyTorch's nn.Linear (weights stored [out, in], as in every CLIP checkpoint), optionally followed by an
    activation (`act`: "quick_gelu" or "gelu") or added to a residual stream (`residual`, shaped like the
    output): the two things that always follow a linear layer in CLIP, so that fast backends can fuse them.
    The leading axes are flattened so that BLAS sees one large matrix product, not one per batch item."""
    y = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(*x.shape[:-1], weight.shape[0])
    if bias is not None:
        y = y + bias
    if act is not None:
        y = activation(y, act)
    if residual is not None:
        y = residual + y
    return y


def layer_norm(x, weight, bias, eps=1e-5):  # [..., D], [D], [D] -> [..., D]
    """LayerNorm over the last axis with the biased variance, as torch.nn.LayerNorm."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def softmax(x):  # [..., N] -> [..., N]
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # subtracting the max changes nothing but avoids overflow
    return e / e.sum(axis=-1, keepdims=True)


def attention_probs(q, k, causal):  # [B, H, T, d], [B, H, T, d] -> [B, H, T, T]
    """Softmax of the scaled similarity of every query to every key: row i says how much token i reads
    from each token. `causal` hides later tokens from earlier ones (the text encoder)."""
    T, d = q.shape[-2:]
    # similarity of every query to every key, scaled so its variance does not grow with d
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)  # [B, H, T, T]
    # causal mask: token t may only look at tokens <= t (OpenAI's build_attention_mask fills -inf above
    # the diagonal); the diagonal is never masked, so no row is all -inf
    if causal:
        scores = scores + np.triu(np.full((T, T), -np.inf, dtype=scores.dtype), k=1)
    return softmax(scores)


def split_heads(qkv, n_head):  # [B, T, 3D] -> 3 x [B, H, T, d]
    B, T, three_D = qkv.shape
    return qkv.reshape(B, T, 3, n_head, three_D // 3 // n_head).transpose(2, 0, 3, 1, 4)


def attention(qkv, n_head, causal):  # [B, T, 3D] -> [B, T, D]
    """Multi-head scaled dot-product attention (Vaswani et al. 2017; CLIP paper section 2.4) on the output
    of the stacked q/k/v projection."""
    B, T, three_D = qkv.shape
    q, k, v = split_heads(qkv, n_head)  # 1. split q, k, v and the heads: 3 x [B, H, T, d]
    probs = attention_probs(q, k, causal)  # 2.-4. scores, causal mask, softmax: [B, H, T, T]
    out = probs @ v  # 5. weighted average of the values: [B, H, T, d]
    return out.transpose(0, 2, 1, 3).reshape(B, T, three_D // 3)  # 6. merge the heads: [B, T, D]


def quick_gelu(x):  # [...] -> [...]
    """x * sigmoid(1.702 x): OpenAI's cheap GELU approximation (clip/model.py QuickGELU), which the OpenAI
    weights were trained with. The exponent is clipped at 88 so e^z stays finite (x / huge is ~0 anyway)."""
    return x / (1.0 + np.exp(np.minimum(-1.702 * x, 88.0)))


def erfc(x):  # [...] -> [...]
    """The complementary error function 1 - erf(x) (NumPy has none). Chebyshev fit of Numerical Recipes
    (2nd ed., section 6.2, `erfcc`): relative error < 1.2e-7 everywhere, i.e. about float32's own rounding.
    Evaluated in float64 and rounded back."""
    z = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.5 * z)
    c = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
         0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)
    poly = c[-1]
    for coefficient in c[-2::-1]:  # Horner's rule
        poly = coefficient + t * poly
    erfc_z = t * np.exp(-z * z + poly)
    return np.where(x >= 0, erfc_z, 2.0 - erfc_z).astype(x.dtype)


def gelu(x):  # [...] -> [...]
    """Exact GELU, x * Phi(x) (Hendrycks & Gimpel 2016), as torch.nn.GELU() with erf (not its tanh form);
    used by LAION/open_clip-trained weights. Phi(x) = erfc(-x / sqrt 2) / 2 keeps the relative accuracy
    for negative x, where Phi is tiny."""
    return 0.5 * x * erfc(-x * np.float32(1 / np.sqrt(2.0)))


def activation(x, kind):  # [...] -> [...]
    return quick_gelu(x) if kind == "quick_gelu" else gelu(x)
