"""CLIP's two encoders and its contrastive head, read like the paper (Radford et al. 2021, section 2).

Every function states its shapes: B batch, S image side, P patch side, N = (S/P)^2 patches,
T tokens, D width (D_v vision, D_t text), E embedding width, F MLP width. Parameters keep the
names of OpenAI's checkpoints (see weights.py). The arithmetic is done by `ops`, a backend module with
linear / layer_norm / attention (ops.py is the NumPy reference; backends/numba_ops.py and
backends/cuda_ops.py the fast ones), plus prepare / to_device / to_host for backends that keep the weights
in their own form (packed panels, GPU arrays); this file only says what.
"""

from __future__ import annotations

import numpy as np

from .config import CLIPConfig
from .errors import InputError
from .ops import split_heads


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """{"a.b.0.c": x} -> {"a": {"b": [{"c": x}]}}: checkpoint names as nested dicts, layer lists as lists."""
    tree: dict = {}
    for name, value in flat.items():
        *path, leaf = name.split(".")
        node = tree
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        if node and all(k.isdigit() for k in node):
            return [listify(node[str(i)]) for i in range(len(node))]
        return {k: listify(v) for k, v in node.items()}

    return listify(tree)


class NoRecorder:
    """What the forward pass reports its stages to; this default records nothing and costs nothing, so the
    model code needs no `if` for it. `Recorder` (below) keeps them."""

    keeps_all_tokens = False  # recording wants every token's state, so the exact shortcuts are off then

    def step(self, name: str, x):  # a named stage's output, passed through
        return x

    def hidden(self, x) -> None:  # a block's input (and, last, the final block's output)
        pass

    def attention(self, name: str, qkv, n_head: int, causal: bool) -> None:  # a block's attention input
        pass


class Recorder(NoRecorder):
    """Collects what a forward pass computes, for people looking inside the model (return_hidden=True,
    `miniclip trace`).

    hidden_states: the input of the first block, then each block's output: L + 1 arrays [B, T, D], as
    transformers' `output_hidden_states`. attentions: each block's attention probabilities [B, H, T, T],
    as transformers' `output_attentions`, computed apart by `ops.attention_probs` (ops.attention, fused
    in the fast backends, keeps none). steps: (name, array) of every stage, in order."""

    keeps_all_tokens = True

    def __init__(self, ops):
        self.ops = ops
        self.hidden_states: list = []
        self.attentions: list = []
        self.steps: list[tuple[str, object]] = []

    def step(self, name: str, x):
        self.steps.append((name, x))
        return x

    def hidden(self, x) -> None:
        self.hidden_states.append(x)

    def attention(self, name: str, qkv, n_head: int, causal: bool) -> None:  # [B, T, 3D] -> keeps [B, H, T, T]
        q, k, _ = split_heads(qkv, n_head)
        self.attentions.append(self.step(name, self.ops.attention_probs(q, k, causal)))


NO_RECORDER = NoRecorder()


def residual_attention_block(x, ln_1, attn, ln_2, mlp, *, n_head, causal, act, eps, ops,
                             keep=None, rec=NO_RECORDER, name=""):  # [B, T, D] -> [B, T, D] (or [B, T_keep, D])
    """Pre-LN transformer block (OpenAI clip/model.py ResidualAttentionBlock):
    x + attn(ln_1(x)), then x + mlp(ln_2(x)). `keep` (a slice of token positions) computes the output of
    those tokens only, when nothing reads the others: every token is still attended to."""
    h = ops.layer_norm(x, **ln_1, eps=eps)
    qkv = ops.linear(h, attn["in_proj_weight"], attn["in_proj_bias"])  # [B, T, D] -> [B, T, 3D]
    rec.attention(f"{name}.attn.probs", qkv, n_head, causal)
    h = ops.attention(qkv, n_head, causal)  # [B, T, 3D] -> [B, T, D]
    if keep is not None:  # after attention, tokens no longer mix: the rest of the block is per token
        x, h = x[:, keep], h[:, keep]
    x = rec.step(f"{name} + attn", ops.linear(h, **attn["out_proj"], residual=x))  # x + out_proj(h): [B, T, D]
    h = ops.layer_norm(x, **ln_2, eps=eps)
    h = rec.step(f"{name}.mlp.c_fc + {act}", ops.linear(h, **mlp["c_fc"], act=act))  # act(c_fc(h)): [B, T, F]
    return ops.linear(h, **mlp["c_proj"], residual=x)  # x + c_proj(h): [B, T, F] -> [B, T, D]


def transformer(x, resblocks, keep_last=None, rec=NO_RECORDER, name="", **block_kwargs):  # [B, T, D] -> [B, T, D]
    """The blocks in turn; `keep_last` limits the last block's output to those token positions (not when
    recording, since then every token's hidden state is wanted)."""
    for i, block in enumerate(resblocks):
        keep = keep_last if i == len(resblocks) - 1 and not rec.keeps_all_tokens else None
        rec.hidden(x)
        x = residual_attention_block(x, **block, keep=keep, rec=rec, name=f"{name}.resblocks.{i}", **block_kwargs)
        x = rec.step(f"{name}.resblocks.{i} + mlp", x)
    rec.hidden(x)
    return x


def patchify(images, P):  # [B, 3, S, S] -> [B, N, 3*P*P]
    """Cut images into non-overlapping P x P patches, each flattened in (channel, row, column) order, the
    order of conv1.weight's [D, 3, P, P]: so the stride-P convolution becomes one matrix product."""
    B, C, S, _ = images.shape
    g = S // P
    x = images.reshape(B, C, g, P, g, P).transpose(0, 2, 4, 1, 3, 5)  # [B, g, g, 3, P, P]
    return x.reshape(B, g * g, C * P * P)


def vision_transformer(images, visual, cfg: CLIPConfig, ops, rec=NO_RECORDER):  # [B, 3, S, S] -> [B, E]
    """The image encoder: a ViT (Dosovitskiy et al. 2020) with an extra LayerNorm before the transformer
    (CLIP paper section 2.4). `rec` (a Recorder) collects every stage when given."""
    D = cfg.vision_width
    conv1 = visual["conv1"]["weight"].reshape(D, -1)  # [D, 3, P, P] -> [D, 3*P*P], a view
    x = rec.step("visual.patchify", patchify(images, cfg.patch_size))  # [B, 3, S, S] -> [B, N, 3*P*P]
    x = rec.step("visual.conv1", ops.linear(x, conv1))  # [B, N, 3*P*P] -> [B, N, D]
    cls = np.broadcast_to(visual["class_embedding"], (x.shape[0], 1, D)).astype(x.dtype)
    x = rec.step("visual.class_embedding", np.concatenate([cls, x], axis=1))  # prepend the class token: [B, 1 + N, D]
    x = rec.step("visual.positional_embedding", x + visual["positional_embedding"])  # learned positions: [1 + N, D]
    x = rec.step("visual.ln_pre", ops.layer_norm(x, **visual["ln_pre"], eps=cfg.layer_norm_eps))
    # Only the class token is read after the last block (by ln_post), so that block's out_proj and MLP
    # run on it alone (keep_last): an exact shortcut, as tokens do not mix after attention.
    x = transformer(x, visual["transformer"]["resblocks"], keep_last=slice(0, 1), rec=rec,
                    name="visual.transformer", n_head=cfg.vision_heads, causal=False, act=cfg.activation,
                    eps=cfg.layer_norm_eps, ops=ops)
    x = rec.step("visual.ln_post", ops.layer_norm(x[:, 0, :], **visual["ln_post"], eps=cfg.layer_norm_eps))  # [B, D]
    return rec.step("visual.proj", ops.linear(x, visual["proj"].T))  # [B, D] -> [B, E]; proj is stored [D, E]


def text_transformer(tokens, p, cfg: CLIPConfig, ops, rec=NO_RECORDER):  # [B, T] -> [B, E]
    """The text encoder: a GPT-2-style transformer with a causal mask (section 2.4); the text's feature is
    the final activation at its end-of-text token, the largest token id (OpenAI's `text.argmax(-1)`)."""
    eot = tokens.argmax(axis=-1)  # [B]: position of each text's end token
    # Exact shortcut: with the causal mask no position sees a later one, so positions after the batch's last
    # end token cannot change any pooled feature: drop them (77 -> ~10-20 tokens for typical captions).
    # Not when recording: every position's hidden state is then wanted.
    T = tokens.shape[1] if rec.keeps_all_tokens else int(eot.max()) + 1
    tokens = tokens[:, :T]
    x = rec.step("token_embedding", p["token_embedding"]["weight"][tokens])  # [B, T] -> [B, T, D]
    x = rec.step("positional_embedding", x + p["positional_embedding"][:T])  # [T, D]
    x = transformer(x, p["transformer"]["resblocks"], rec=rec, name="transformer", n_head=cfg.text_heads,
                    causal=True, act=cfg.activation, eps=cfg.layer_norm_eps, ops=ops)
    x = rec.step("ln_final", ops.layer_norm(x, **p["ln_final"], eps=cfg.layer_norm_eps))
    x = rec.step("end token", x[np.arange(x.shape[0]), eot])  # [B, T, D] -> [B, D] at each end token
    return rec.step("text_projection", ops.linear(x, p["text_projection"].T))  # [B, D] -> [B, E]; stored [D, E]


def normalize(x):  # [B, E] -> [B, E], unit L2 norm per row
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class CLIP:
    """A loaded CLIP model. Same calls as openai/CLIP's model: encode_image, encode_text, model(images, texts)."""

    def __init__(self, params: dict[str, np.ndarray], config: CLIPConfig, ops):
        self.config = config
        self.ops = ops
        self.params = unflatten(ops.prepare(params))  # a GPU backend uploads the weights once

    @property
    def logit_scale(self) -> np.ndarray:  # the learned temperature, stored as its log (section 2.5)
        return self.params["logit_scale"]

    def encode_image(self, images: np.ndarray, return_hidden: bool = False):  # [B, 3, S, S] -> [B, E] float32
        """Image features (not normalized) for a batch of preprocessed images. With return_hidden=True,
        returns (features, hidden): hidden["hidden_states"] [L + 1, B, 1 + N, D] (the input of each block,
        then the last block's output), hidden["attentions"] [L, B, H, 1 + N, 1 + N], and hidden["steps"],
        every named stage in order (see `miniclip trace`)."""
        S = self.config.image_size
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (3, S, S):
            hint = " (a single image? use images[None] or np.stack([...]))" if images.shape == (3, S, S) else ""
            raise InputError(f"encode_image expects preprocessed images of shape [B, 3, {S}, {S}], "
                             f"got {list(images.shape)}{hint}")
        if not np.issubdtype(images.dtype, np.floating):
            raise InputError(f"encode_image expects float pixels from preprocess(), got dtype {images.dtype}")
        if images.shape[0] == 0:
            return self._empty(return_hidden)
        rec = Recorder(self.ops) if return_hidden else NO_RECORDER
        pixels = self.ops.to_device(images.astype(np.float32, copy=False))
        features = self.ops.to_host(vision_transformer(pixels, self.params["visual"], self.config, self.ops, rec))
        return (features, _hidden(rec, self.ops.to_host)) if return_hidden else features

    def encode_text(self, tokens: np.ndarray, return_hidden: bool = False):  # [B, T] -> [B, E] float32
        """Text features (not normalized) for token ids from miniclip.tokenize. With return_hidden=True,
        returns (features, hidden) as encode_image does, with T tokens in place of 1 + N."""
        tokens = np.asarray(tokens)
        T_max, V = self.config.context_length, self.config.vocab_size
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= T_max or not np.issubdtype(tokens.dtype, np.integer):
            raise InputError(f"encode_text expects integer token ids of shape [B, T] with T <= {T_max} "
                             f"(from miniclip.tokenize), got {tokens.dtype} {list(tokens.shape)}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= V):
            raise InputError(f"token ids must lie in [0, {V}), found {tokens.min()}..{tokens.max()}")
        if tokens.shape[0] == 0:
            return self._empty(return_hidden)
        rec = Recorder(self.ops) if return_hidden else NO_RECORDER
        features = self.ops.to_host(text_transformer(tokens, self.params, self.config, self.ops, rec))
        return (features, _hidden(rec, self.ops.to_host)) if return_hidden else features

    def _empty(self, return_hidden: bool) -> np.ndarray:  # an empty batch -> [0, E], as NumPy would slice it
        if return_hidden:
            raise InputError("return_hidden=True needs at least one image or text; the batch is empty")
        return np.zeros((0, self.config.embed_dim), np.float32)

    def __call__(self, images: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits_per_image [B_img, B_txt], logits_per_text [B_txt, B_img]): the cosine similarity of every
        image with every text, times the learned temperature exp(logit_scale) (section 2.5, Figure 3)."""
        image_features = normalize(self.encode_image(images))
        text_features = normalize(self.encode_text(tokens))
        logits_per_image = np.exp(self.logit_scale) * image_features @ text_features.T
        return logits_per_image, logits_per_image.T


def _hidden(rec: Recorder, to_host) -> dict:
    return {"hidden_states": np.stack([to_host(h) for h in rec.hidden_states]),
            "attentions": np.stack([to_host(a) for a in rec.attentions]),
            "steps": [(name, to_host(x)) for name, x in rec.steps]}
