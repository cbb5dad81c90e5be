"""RoFormer-Sim (SimBERTv2, techniques.md §3): one transformer that retrieves ([CLS] vector) and generates
similar sentences (seq2seq through the UniLM attention mask).

The model is a sentence-transformers stack ``[Transformer, Pooling(cls), Dense(linear, no tanh), UniLMHead]``:

- encoding a single sentence (segment ids all 0) runs exactly as the plain retrieval model
  ``[Transformer, Pooling(cls), Dense]`` does, which is what :func:`export_retrieval` saves (loadable by plain
  sentence-transformers, no simtool, no ``trust_remote_code``);
- a pair ``[CLS] A [SEP] B [SEP]`` with segment ids 0/1 is attended through the UniLM mask (installed on the
  backbone by :class:`UniLMHead` as a forward pre-hook that turns token type ids into the additive mask), so the
  [CLS] vector sees only A and the hidden states over B predict B's next tokens through the LM head, whose
  decoder is tied to the word embeddings.

Any BERT-family encoder of transformers works as the backbone (``BertModel``, ``RoFormerModel`` with rotary
positions, MiniLM); an MLM head in the checkpoint (``cls.predictions.*``) initialises the LM head, and BERT's
pooler dense initialises the linear pooler, as bert4keras ``with_pool='linear'`` / ``with_mlm='linear'`` do.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.modules import Module
from torch import Tensor, nn

from simtool.errors import SimtoolError
from simtool.validate import check_positive

log = logging.getLogger(__name__)


def unilm_mask(segment_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``(n, L, L)`` bool: query i may attend key j iff ``idx_j <= idx_i`` (idx = cumsum(segment_ids)) and j is
    not padding (bert4keras ``UniLM_Mask``). Segment 0 (``[CLS] A [SEP]``) is bidirectional within itself,
    segment 1 (``B [SEP]``) sees all of segment 0 and itself causally, so [CLS] encodes A only.

    ``segment_ids``, ``attention_mask``: ``(n, L)`` ints (1 = real token).
    """
    idx = torch.cumsum(segment_ids, dim=1)
    allowed = idx[:, None, :] <= idx[:, :, None]
    return allowed & attention_mask.bool()[:, None, :]


def unilm_attention_bias(segment_ids: Tensor, attention_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(n, 1, L, L)`` additive bias (0 where allowed, the dtype's minimum elsewhere) for a transformers encoder.

    An additive float mask, not a bool one: transformers 5's eager attention (RoFormer) misreads 4-D bool masks.
    """
    allowed = unilm_mask(segment_ids, attention_mask)[:, None]
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _unilm_pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Replace a 2-D padding mask by the UniLM bias whenever token type ids come with it.

    With segment ids all 0 the UniLM mask *is* the padding mask, so single sentences encode exactly as without
    the hook; only inputs with a segment 1 (pairs, generation) change.
    """
    segments, mask = kwargs.get("token_type_ids"), kwargs.get("attention_mask")
    if isinstance(segments, Tensor) and isinstance(mask, Tensor) and mask.ndim == 2 and bool(segments.any()):
        dtype = getattr(module, "dtype", torch.float32)
        kwargs["attention_mask"] = unilm_attention_bias(
            segments, mask, dtype if dtype.is_floating_point else torch.float32
        )
    return args, kwargs


class UniLMHead(Module):
    """The seq2seq head of RoFormer-Sim: ``LayerNorm(act(W h)) @ Eᵀ + bias`` with E the tied word embeddings.

    As a module of the sentence-transformers stack it passes features through unchanged (encoding never pays for
    it); :meth:`logits` maps hidden states ``(..., hidden)`` to ``(..., vocab)``. Once the model is assembled
    (:meth:`on_model_ready`) it ties itself to the backbone's word embeddings and installs the UniLM mask.
    """

    # A plain list, as sentence-transformers declares it (an instance variable on Module).
    config_keys: list[str] = ["hidden_size", "embedding_size", "vocab_size", "hidden_act", "layer_norm_eps"]  # noqa: RUF012

    def __init__(
        self,
        hidden_size: int,
        embedding_size: int,
        vocab_size: int,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.hidden_size, self.embedding_size, self.vocab_size = hidden_size, embedding_size, vocab_size
        self.hidden_act, self.layer_norm_eps = hidden_act, layer_norm_eps
        self.dense = nn.Linear(hidden_size, embedding_size)
        self.act = ACT2FN[hidden_act]
        self.LayerNorm = nn.LayerNorm(embedding_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        # A plain list: the embedding stays owned (and saved) by the backbone, not registered twice.
        self._tied: list[nn.Embedding] = []

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return features

    def on_model_ready(self, model: Any) -> None:
        backbone = model[0].auto_model
        self._tied[:] = [backbone.get_input_embeddings()]
        if not getattr(backbone, "_simtool_unilm", False):
            # Wrap forward itself, not a forward pre-hook: sentence-transformers calls ``model.forward`` directly,
            # which skips hooks.
            original = backbone.forward

            def forward(*args: Any, **kwargs: Any) -> Any:
                args, kwargs = _unilm_pre_hook(backbone, args, kwargs)
                return original(*args, **kwargs)

            backbone.forward = forward
            backbone._simtool_unilm = True

    def logits(self, hidden: Tensor) -> Tensor:
        """``(..., hidden)`` → ``(..., vocab)`` next-token logits."""
        if not self._tied:
            raise SimtoolError("UniLMHead is not attached to a model; load it with simtool.load_roformer_sim")
        x = self.LayerNorm(self.act(self.dense(hidden)))
        return x @ self._tied[0].weight.T + self.bias

    def get_embedding_dimension(self) -> int | None:
        return None

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> UniLMHead:  # type: ignore[override]
        config = cls.load_config(model_name_or_path, subfolder=subfolder)
        head = cls(**config)
        cls.load_torch_weights(model_name_or_path, subfolder=subfolder, model=head)
        return head


def _checkpoint_tensors(path: Path, prefixes: Sequence[str]) -> dict[str, Tensor]:
    """Tensors of a transformers checkpoint (``model.safetensors``) whose names start with one of ``prefixes``."""
    file = path / "model.safetensors"
    if not file.is_file():
        return {}
    from safetensors import safe_open

    out = {}
    with safe_open(str(file), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if name.startswith(tuple(prefixes)):
                out[name] = f.get_tensor(name)
    return out


def build_roformer_sim(model_name_or_path: str | os.PathLike[str] | None = None, device: str | None = None) -> Any:
    """A RoFormer-Sim stack from a transformers or sentence-transformers directory (or the default model).

    A directory that already is a RoFormer-Sim model (has a :class:`UniLMHead`) is loaded as it is.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    from simtool.encoder import load_encoder, resolve_model_path

    path = resolve_model_path(model_name_or_path)
    model = load_encoder(path, device=device or "cpu")
    existing = next((m for m in model if isinstance(m, UniLMHead)), None)
    if existing is not None:
        existing.on_model_ready(model)
        return model
    transformer = model[0]
    if not isinstance(transformer, Transformer):
        raise SimtoolError(f"{path}: roformer-sim needs a transformer model, found {type(transformer).__name__}")
    config = transformer.auto_model.config
    hidden = int(config.hidden_size)
    embedding = int(getattr(config, "embedding_size", hidden) or hidden)
    pooler = transformer.auto_model.state_dict()
    init = {}
    if "pooler.dense.weight" in pooler:
        # bert4keras with_pool='linear': the checkpoint's pooler dense without its tanh.
        init = {"init_weight": pooler["pooler.dense.weight"].clone(), "init_bias": pooler["pooler.dense.bias"].clone()}
    dense = Dense(hidden, hidden, activation_function=nn.Identity(), **init)
    act = config.hidden_act if isinstance(config.hidden_act, str) else "gelu"
    head = UniLMHead(hidden, embedding, int(config.vocab_size), act, float(getattr(config, "layer_norm_eps", 1e-12)))
    weights_dir = path if (path / "config.json").exists() else path / "0_Transformer"
    mlm = _checkpoint_tensors(weights_dir, ["cls.predictions."])
    mapping = {
        "cls.predictions.transform.dense.weight": "dense.weight",
        "cls.predictions.transform.dense.bias": "dense.bias",
        "cls.predictions.transform.LayerNorm.weight": "LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias": "LayerNorm.bias",
        "cls.predictions.bias": "bias",
    }
    found = {ours: mlm[theirs] for theirs, ours in mapping.items() if theirs in mlm}
    if found:
        head.load_state_dict(found, strict=False)
        log.info("roformer-sim: LM head initialised from the checkpoint's MLM head (%d tensors)", len(found))
    modules = [transformer, Pooling(hidden, pooling_mode="cls"), dense, head]
    sim = SentenceTransformer(modules=modules, device=str(model.device))
    sim.max_seq_length = model.max_seq_length
    head.on_model_ready(sim)
    return sim


def load_roformer_sim(path: str | os.PathLike[str], device: str | None = None) -> Any:
    """Load a trained RoFormer-Sim directory; :class:`SimtoolError` naming it when it has no LM head."""
    from simtool.encoder import load_encoder

    model = load_encoder(path, device=device)
    head = next((m for m in model if isinstance(m, UniLMHead)), None)
    if head is None:
        raise SimtoolError(f"{path}: not a RoFormer-Sim model (no LM head); train one with recipe='roformer-sim'")
    head.on_model_ready(model)
    return model


def lm_head(model: Any) -> UniLMHead:
    head = next((m for m in model if isinstance(m, UniLMHead)), None)
    if head is None:
        raise SimtoolError("this model has no UniLM head (not a RoFormer-Sim model)")
    return head


def export_retrieval(model: Any, target: str | os.PathLike[str]) -> Path:
    """Save the retrieval side ``[Transformer, Pooling(cls), Dense]`` as a plain sentence-transformers directory."""
    from sentence_transformers import SentenceTransformer

    modules = [m for m in model if not isinstance(m, UniLMHead)]
    plain = SentenceTransformer(modules=modules, device=str(model.device))
    plain.max_seq_length = model.max_seq_length
    plain.save(str(target), create_model_card=False)
    return Path(target)


# --------------------------------------------------------------------------- inputs


def special_ids(tokenizer: Any) -> tuple[int, int, int, int]:
    """``(cls, sep, pad, mask)`` token ids; :class:`SimtoolError` when the tokenizer lacks one."""
    ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id)
    if any(i is None for i in ids):
        raise SimtoolError("roformer-sim needs a BERT-style tokenizer with [CLS], [SEP], [PAD] and [MASK] tokens")
    return ids


_truncation_warned = False


def pair_features(
    model: Any,
    pairs: Sequence[tuple[str, str]],
    max_length: int,
    *,
    noise: float = 0.0,
    rng: random.Random | None = None,
) -> tuple[dict[str, Tensor], list[str]]:
    """Rows ``[CLS] A [SEP] B [SEP]`` and ``[CLS] B [SEP] A [SEP]`` (adjacent, 2k and 2k+1) for each pair.

    Returns padded ``input_ids``, ``token_type_ids`` (0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``) and
    ``attention_mask``, each ``(2·len(pairs), L)``, plus the clean source text of each row (for a teacher).
    A row longer than ``max_length`` loses tokens from the end of its longer side (one warning per run).
    ``noise`` is the probability that a row's source is noised (:func:`simtool.noise.whole_word_noise`).
    """
    from simtool.noise import whole_word_noise, word_starts

    global _truncation_warned
    tokenizer = model.tokenizer
    cls, sep, pad, mask = special_ids(tokenizer)
    rng = rng or random.Random(0)
    sources = [t for a, b in pairs for t in (a, b)]
    targets = [t for a, b in pairs for t in (b, a)]
    encoded = tokenizer(sorted(set(sources)), add_special_tokens=False)["input_ids"]
    tokens = dict(zip(sorted(set(sources)), encoded, strict=True))
    rows: list[tuple[list[int], list[int]]] = []
    truncated = 0
    for src, tgt in zip(sources, targets, strict=True):
        a, b = list(tokens[src]), list(tokens[tgt])
        if len(a) + len(b) + 3 > max_length:
            truncated += 1
            while len(a) + len(b) + 3 > max_length:
                (a if len(a) >= len(b) else b).pop()
        if noise > 0 and rng.random() < noise:
            a = whole_word_noise(a, word_starts(tokenizer, src, a), rng, mask_id=mask, vocab_size=len(tokenizer))
        rows.append(([cls, *a, sep], [*b, sep]))
    if truncated and not _truncation_warned:
        _truncation_warned = True
        log.warning(
            "roformer-sim: %d of %d rows exceed max_length %d tokens; their longer side is truncated "
            "(further truncations are not reported)",
            truncated,
            len(rows),
            max_length,
        )
    width = max(len(s) + len(t) for s, t in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    seg = torch.zeros_like(ids)
    att = torch.zeros_like(ids)
    for r, (s, t) in enumerate(rows):
        n = len(s) + len(t)
        ids[r, :n] = torch.tensor(s + t)
        seg[r, len(s) : n] = 1
        att[r, :n] = 1
    return {"input_ids": ids, "token_type_ids": seg, "attention_mask": att}, sources


def seq2seq_token_loss(model: Any, features: dict[str, Any], token_embeddings: Tensor) -> tuple[Tensor, int]:
    """Summed next-token cross-entropy over B's tokens and the final [SEP], and their count.

    Position t predicts token t+1 wherever token t+1 is in segment 1 (the first B token is predicted at A's
    [SEP]); logits are computed only at those positions, so memory is (targets, vocab), not (n, L, vocab).
    """
    ids, seg, att = features["input_ids"], features["token_type_ids"], features["attention_mask"]
    target_mask = (seg[:, 1:] * att[:, 1:]).bool()
    hidden = token_embeddings[:, :-1][target_mask]
    logits = lm_head(model).logits(hidden).float()
    return F.cross_entropy(logits, ids[:, 1:][target_mask], reduction="sum"), int(target_mask.sum())


# --------------------------------------------------------------------------- generation


def _top_p_top_k(logits: Tensor, top_p: float, top_k: int | None) -> Tensor:
    """Logits with everything outside the top-k and the nucleus of mass ``top_p`` set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Keep a token when the mass before it is below top_p (the first token is always kept).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, -torch.inf)
        logits = torch.full_like(logits, -torch.inf).scatter(-1, order, sorted_logits)
    return logits


def _supports_kv_cache(backbone: nn.Module) -> bool:
    """Whether this transformers backbone's forward takes a ``cache`` (transformers 5) to fill and reuse."""
    import inspect

    return "cache" in inspect.signature(type(backbone).forward).parameters


@torch.no_grad()
def sample_continuations(
    model: Any,
    texts: Sequence[str],
    *,
    candidates: int = 20,
    top_p: float = 0.95,
    top_k: int | None = None,
    temperature: float = 1.0,
    max_length: int = 64,
    seed: int | None = None,
    use_cache: bool | None = None,
) -> list[list[str]]:
    """``candidates`` sampled sentences B for each text A (segment 1 after ``[CLS] A [SEP]``), batched.

    Every (text, candidate) row decodes in one batch; a row stops at its first [SEP]. ``use_cache`` (default: when
    the backbone supports it) keeps each layer's keys and values, so a step runs one new token per row instead of
    the whole sequence; the UniLM mask makes earlier positions independent of later tokens, so both ways give the
    same logits (tested with greedy decoding).
    """
    tokenizer = model.tokenizer
    cls, sep, pad, _ = special_ids(tokenizer)
    head = lm_head(model)
    backbone = model[0].auto_model
    device = next(backbone.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else random.randrange(2**31))
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = []
    for ids in encoded:
        ids = ids[: max(1, max_length // 2 - 2)]
        rows.extend([[cls, *ids, sep]] * candidates)
    width = max(len(r) for r in rows)
    budget = max(1, max_length - width)
    cached = _supports_kv_cache(backbone) if use_cache is None else use_cache
    step_logits = (_CachedDecoder if cached else _RecomputeDecoder)(backbone, rows, width, budget, pad, device)
    n = len(rows)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(n)]
    for _ in range(budget):
        logits = head.logits(step_logits.last_hidden()).float() / max(temperature, 1e-6)
        logits[:, [cls, pad]] = -torch.inf
        probs = _top_p_top_k(logits, top_p, top_k).softmax(-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = torch.where(done, torch.full_like(token, pad), token)
        step_logits.append(token, ~done)
        for r in (~done).nonzero().flatten().tolist():
            if int(token[r]) != sep:
                out[r].append(int(token[r]))
        done |= token == sep
        if bool(done.all()):
            break
    decoded = tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return [decoded[i * candidates : (i + 1) * candidates] for i in range(len(texts))]


class _RecomputeDecoder:
    """Each step re-runs the whole sequence so far: sources left-aligned, tokens after each at its own position."""

    def __init__(self, backbone: Any, rows: list[list[int]], width: int, budget: int, pad: int, device: Any) -> None:
        n = len(rows)
        self.backbone, self.step = backbone, 0
        self.src_len = torch.tensor([len(r) for r in rows], device=device)
        self.ids = torch.full((n, width + budget), pad, dtype=torch.long, device=device)
        self.seg = torch.zeros_like(self.ids)
        self.att = torch.zeros_like(self.ids)
        for r, row in enumerate(rows):
            self.ids[r, : len(row)] = torch.tensor(row, device=device)
            self.att[r, : len(row)] = 1
        self.arange = torch.arange(n, device=device)

    def last_hidden(self) -> Tensor:
        """``(n, hidden)`` state of each row's last token."""
        pos = self.src_len + self.step
        upto = int(pos.max())
        hidden = self.backbone(
            input_ids=self.ids[:, :upto], attention_mask=self.att[:, :upto], token_type_ids=self.seg[:, :upto]
        ).last_hidden_state
        return hidden[self.arange, pos - 1]

    def append(self, token: Tensor, live: Tensor) -> None:
        pos = self.src_len + self.step
        self.ids[self.arange, pos] = token
        self.seg[self.arange, pos] = 1
        self.att[self.arange, pos] = live.long()
        self.step += 1


class _CachedDecoder:
    """Keys and values kept per layer (a transformers ``DynamicCache``); each step feeds one token per row.

    Sources are left-padded so every row's next token goes to the same cache slot. Absolute position embeddings
    (BERT) get each row's true positions; rotary ones (RoFormer) depend only on distances, which left padding
    keeps. The attention bias of a new token allows the row's real source tokens, its earlier live tokens and
    itself: the UniLM mask's row for that token.
    """

    def __init__(self, backbone: Any, rows: list[list[int]], width: int, budget: int, pad: int, device: Any) -> None:
        import inspect

        from transformers import DynamicCache

        n = len(rows)
        self.backbone, self.device = backbone, device
        self.cache = DynamicCache(config=backbone.config)
        self.absolute = (
            "position_ids" in inspect.signature(type(backbone).forward).parameters
            and getattr(backbone.config, "position_embedding_type", "absolute") == "absolute"
        )
        ids = torch.full((n, width), pad, dtype=torch.long, device=device)
        self.keys = torch.zeros((n, width + budget), dtype=torch.bool, device=device)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row, device=device)
            self.keys[r, width - len(row) : width] = True
        self.next_pos = torch.tensor([len(r) for r in rows], device=device)
        self.filled = width
        extra = {"position_ids": (self.keys[:, :width].long().cumsum(1) - 1).clamp(min=0)} if self.absolute else {}
        hidden = backbone(
            input_ids=ids,
            attention_mask=self.keys[:, :width].long(),
            token_type_ids=torch.zeros_like(ids),
            cache=self.cache,
            use_cache=True,
            **extra,
        ).last_hidden_state
        self.hidden = hidden[:, -1]

    def last_hidden(self) -> Tensor:
        """``(n, hidden)`` state of each row's last token."""
        return self.hidden

    def append(self, token: Tensor, live: Tensor) -> None:
        slot = self.filled
        # A finished row's pad is not a key for anyone; it still attends to itself so its softmax is defined.
        self.keys[:, slot] = live
        allowed = self.keys[:, : slot + 1].clone()
        allowed[:, slot] = True
        dtype = getattr(self.backbone, "dtype", torch.float32)
        bias = torch.where(allowed, torch.zeros((), dtype=dtype, device=self.device), torch.finfo(dtype).min)
        extra = {"position_ids": self.next_pos[:, None]} if self.absolute else {}
        hidden = self.backbone(
            input_ids=token[:, None],
            attention_mask=bias[:, None, None, :],
            token_type_ids=torch.ones_like(token)[:, None],
            cache=self.cache,
            use_cache=True,
            **extra,
        ).last_hidden_state
        self.hidden = hidden[:, -1]
        self.next_pos = self.next_pos + 1
        self.filled += 1


def generate_similar(
    model: Any,
    texts: Sequence[str],
    *,
    n: int = 5,
    candidates: int = 20,
    top_p: float = 0.95,
    top_k: int | None = None,
    temperature: float = 1.0,
    max_length: int = 64,
    seed: int | None = None,
    rerank: bool = True,
) -> list[list[tuple[str, float]]]:
    """Up to ``n`` similar sentences per text with their scores (SimBERT's ``gen_synonyms``).

    Samples ``candidates`` continuations per text (nucleus ``top_p``, optional ``top_k``, ``temperature``),
    drops empty ones, duplicates and the input itself, and with ``rerank`` orders them by the model's own
    cosine to the input ([CLS] vectors); without it they keep sampling order with score = that cosine anyway.
    """
    check_positive("n", n)
    if candidates < n:
        raise SimtoolError(f"candidates must be >= n, got {candidates} < {n}")
    if not 0.0 < top_p <= 1.0:
        raise SimtoolError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None:
        check_positive("top_k", top_k)
    check_positive("temperature", temperature)
    if max_length < 4:
        raise SimtoolError(f"max_length must be >= 4, got {max_length}")
    texts = list(texts)
    if any(not t.strip() for t in texts):
        raise SimtoolError("texts must not contain empty strings")
    was_training = model.training
    model.eval()
    try:
        sampled = sample_continuations(
            model,
            texts,
            candidates=candidates,
            top_p=top_p,
            top_k=top_k,
            temperature=temperature,
            max_length=max_length,
            seed=seed,
        )
    finally:
        model.train(was_training)
    return rank_candidates(model, texts, sampled, n=n, rerank=rerank)


def rank_candidates(
    model: Any, texts: Sequence[str], sampled: Sequence[Sequence[str]], *, n: int = 5, rerank: bool = True
) -> list[list[tuple[str, float]]]:
    """The second half of :func:`generate_similar`: per text, drop empty candidates, duplicates and the text
    itself (case and whitespace ignored), score the rest by the model's cosine to the text ([CLS] vectors) and
    keep the top ``n`` (sampling order without ``rerank``). ``sampled``: one list of candidates per text."""
    kept: list[list[str]] = []
    for text, cands in zip(texts, sampled, strict=True):
        seen, keep = {_normalise(text)}, []
        for c in cands:
            c = c.strip()
            if c and _normalise(c) not in seen:
                seen.add(_normalise(c))
                keep.append(c)
        kept.append(keep)
    flat = [t for text, keep in zip(texts, kept, strict=True) for t in (text, *keep)]
    was_training = model.training
    model.eval()
    try:
        vectors = model.encode(flat, convert_to_tensor=True, normalize_embeddings=True, batch_size=64)
    finally:
        model.train(was_training)
    results, at = [], 0
    for keep in kept:
        query, cand = vectors[at], vectors[at + 1 : at + 1 + len(keep)]
        at += 1 + len(keep)
        scores = (cand @ query).tolist() if keep else []
        order = sorted(range(len(keep)), key=lambda i: -scores[i]) if rerank else list(range(len(keep)))
        results.append([(keep[i], float(scores[i])) for i in order[:n]])
    return results


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())
