"""
A GPT language model in one file, in the spirit of karpathy/nanoGPT.

Two variants share the same skeleton (token embedding -> n_layer pre-norm blocks -> final norm -> tied lm_head):
- "gpt2":   learned absolute position embeddings, LayerNorm, GELU MLP (4x). Parameter names follow
            nanoGPT / HF GPT-2 (transformer.wte, transformer.h.N.attn.c_attn, ...) so export is a renaming.
- "modern": rotary position embeddings (RoPE), RMSNorm, SwiGLU MLP, optionally no biases.

Top to bottom: the configuration (GPTConfig, PRESETS), the blocks (attention, MLPs, Block), the model (GPT: forward,
then generation), the preallocated KV cache (a new token costs one position of compute) and the backend switches
generation uses, the loss (CrossEntropy, its backward written out) and the optimizers (Muon for the blocks' matrices,
AdamW for the rest or alone).

References:
1) GPT-2: https://github.com/openai/gpt-2/blob/master/src/model.py
2) nanoGPT: https://github.com/karpathy/nanoGPT/blob/master/model.py
3) RoPE: Su et al. 2021, https://arxiv.org/abs/2104.09864
4) SwiGLU: Shazeer 2020, https://arxiv.org/abs/2002.05202 ; RMSNorm: Zhang & Sennrich 2019
5) FLOPs per token: PaLM, Chowdhery et al. 2022, appendix B
6) repetition penalty: CTRL, Keskar et al. 2019 ; nucleus sampling: Holtzman et al. 2019
7) Muon: Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/
"""

import contextlib
import math
import os
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch.nn import functional as F

VARIANTS = ("gpt2", "modern")
OPTIMIZERS = ("muon", "adamw")  # the first is the default
ROPE_THETA = 10000.0  # the RoPE base: angle i of position t is t / ROPE_THETA^(2i / head_dim)
NORM_EPS = 1e-5  # LayerNorm's default epsilon, and RMSNorm's here (hf.py writes both into exports)


# -----------------------------------------------------------------------------
# configuration

@dataclass
class GPTConfig:
    block_size: int = 256       # max context length
    vocab_size: int = 50259     # the tokenizer's real vocabulary (GPT-2's 50257 + 2 ChatML tokens)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True           # biases in Linear and LayerNorm, like GPT-2
    variant: str = "gpt2"       # "gpt2" | "modern"

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.variant == "modern" and (self.n_embd // self.n_head) % 2 != 0:
            # RoPE rotates pairs of channels, so each head needs an even number of them
            raise ValueError(f"the modern variant (RoPE) needs an even head_dim; "
                             f"n_embd/n_head = {self.n_embd}/{self.n_head} = {self.n_embd // self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self):
        # rows of wte / lm_head (Vp in shape comments): a multiple of 64 keeps the biggest matmul on aligned shapes
        return (self.vocab_size + 63) // 64 * 64


# name -> GPTConfig field overrides
PRESETS = {
    # tiny is the CPU preset: the modern variant learns faster at that size (BENCHMARKS.md)
    "tiny":     dict(n_layer=4,  n_embd=128, n_head=4,  block_size=256, variant="modern"),  # ~0.86M non-embedding
    "small":    dict(n_layer=6,  n_embd=384, n_head=6,  block_size=256),   # ~10.6M non-embedding, ~30M total
    "gpt2-75m": dict(n_layer=10, n_embd=640, n_head=10, block_size=1024),  # ~49M non-embedding, ~82M total
    "gpt2":     dict(n_layer=12, n_embd=768, n_head=12, block_size=1024),  # GPT-2 small: 85M non-embedding, 124M total
}


def make_config(preset="tiny", **overrides):
    """Preset values, then every override whose value is not None (so argparse defaults of None pass through)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise ValueError(f"unknown GPTConfig field(s) {unknown}; known fields: {sorted(known)}")
    kw = dict(PRESETS[preset])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return GPTConfig(**kw)  # __post_init__ validates


# -----------------------------------------------------------------------------
# the blocks

def apply_rope(x, cos, sin):
    # x (..., T, hs), q and k stacked (2, B, nh, T, hs); cos, sin (T, hs/2). Rotates channel pairs (i, i + hs/2), HF
    # Llama's "rotate half", so q/k weights export without permutation; in fp32, which large positions' angles need
    d = x.size(-1) // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


# CPU bf16 attention from position 0 takes explicit_attention up to this many positions: SDPA's CPU flash kernel is
# slow at small head sizes (not in fp32). The bound: its backward keeps 3/4 of the (T, T) probabilities a head and layer
EXPLICIT_ATTENTION_MAX_T = 512


def explicit_attention(q, k, v, dropout_p=0.0):
    # q, k, v (B, nh, T, hs) -> (B, nh, T, hs), causal. Two halves of the queries, the first seeing the first half of
    # the keys: the quarter of the scores the mask would zero is never computed. The mask is a bias (0 or -inf) that
    # baddbmm adds in, so the softmax compiles into one pass per row.
    B, nh, T, hs = q.shape
    ys = []
    for lo, hi in ((0, T // 2), (T // 2, T)):
        if lo == hi:  # T == 1
            continue
        # query lo+i sees keys 0..lo+i: bias (hi-lo, hi), 0 where it may look, -inf where not
        bias = torch.full((hi - lo, hi), float("-inf"), dtype=q.dtype, device=q.device).triu(lo + 1)
        att = torch.baddbmm(bias.expand(B * nh, hi - lo, hi), q[:, :, lo:hi].reshape(B * nh, hi - lo, hs),
                            k[:, :, :hi].reshape(B * nh, hi, hs).transpose(1, 2), alpha=1.0 / math.sqrt(hs))
        att = att.softmax(dim=-1)  # (B*nh, hi-lo, hi)
        if dropout_p:
            att = F.dropout(att, dropout_p)
        ys.append((att @ v[:, :, :hi].reshape(B * nh, hi, hs)).view(B, nh, hi - lo, hs))
    return torch.cat(ys, dim=2)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        # query, key, value projections for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.dropout_p = config.dropout  # the attention weights' dropout, in training only

    def forward(self, x, rope=None, kv=None, pos=0, attn_mask=None):
        # x (B, T, C); rope: (cos, sin) for positions pos..pos+T-1 or None; kv: this layer's (k, v) cache slices
        # of shape (B, nh, max_len, hs) or None; attn_mask: (T, pos+T) bool, only for a chunk at pos > 0.
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        if rope is not None:
            # q and k rotated in one call: half the ops of two (a B1 decoding step is mostly per-op overhead)
            q, k = apply_rope(qkv[:2], *rope).unbind(0)  # 2x (B, nh, T, hs), contiguous
            v = qkv[2]
        else:
            q, k, v = qkv.unbind(0)  # 3x (B, nh, T, hs)
        if kv is not None:
            k_cache, v_cache = kv
            k_cache[:, :, pos:pos + T] = k
            v_cache[:, :, pos:pos + T] = v
            if pos > 0:  # attend over everything cached so far
                k, v = k_cache[:, :, :pos + T], v_cache[:, :, :pos + T]  # (B, nh, pos+T, hs)
                if k.dtype != q.dtype:  # a cache of another dtype (.to() issues an op even where it changes nothing)
                    k, v = k.to(q.dtype), v.to(q.dtype)
        dropout_p = self.dropout_p if self.training else 0.0
        if pos == 0 and x.device.type == "cpu" and q.dtype != torch.float32 and T <= EXPLICIT_ATTENTION_MAX_T:
            # (a prompt into an empty cache too, so its first token is the one a recomputation without a cache gives)
            y = explicit_attention(q, k, v, dropout_p)  # (B, nh, T, hs)
        else:
            # pos 0: is_causal is exact; after, one query sees all keys, more take attn_mask (is_causal aligns top-left)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=(pos == 0),
                                               dropout_p=dropout_p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): all heads' outputs side by side
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


def gelu_tanh(x):
    """F.gelu(x, approximate="tanh"); compiled, as x * sigmoid(2z) (0.5 (1 + tanh z) = sigmoid 2z), since inductor's
    CPU tanh takes twice as long as its sigmoid. Eager, ATen's fused gelu kernel is faster."""
    if not torch.compiler.is_compiling():
        return F.gelu(x, approximate="tanh")
    return x * torch.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))  # 2 sqrt(2/pi) = 1.5957691...


class MLP(nn.Module):
    """GPT-2 MLP: 4x expansion, tanh-approximated GELU (what GPT-2 was trained with)."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # x (B, T, C) -> c_fc (B, T, 4C) -> c_proj (B, T, C)
        return self.dropout(self.c_proj(gelu_tanh(self.c_fc(x))))


def swiglu_hidden(n_embd):
    # 8/3 * n_embd keeps the parameter count of a 4x GELU MLP despite the third matrix; round up to a multiple of 64
    return 64 * math.ceil(8 * n_embd / 3 / 64)


class SwiGLU(nn.Module):
    """SwiGLU MLP: silu(x W_gate) * (x W_up) W_down, with gate and up fused into one matmul (c_fc)."""

    def __init__(self, config):
        super().__init__()
        hidden = swiglu_hidden(config.n_embd)
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)  # [gate | up]
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # 2x (B, T, hidden)
        return self.dropout(self.c_proj(F.silu(gate) * up))  # (B, T, C)


def make_norm(config):
    if config.variant == "modern":
        return nn.RMSNorm(config.n_embd, eps=NORM_EPS)
    return nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = SwiGLU(config) if config.variant == "modern" else MLP(config)

    def forward(self, x, rope=None, kv=None, pos=0, attn_mask=None):
        # x (B, T, C) -> (B, T, C): pre-norm, each sublayer adds its output to the residual stream
        x = x + self.attn(self.ln_1(x), rope, kv, pos, attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


# -----------------------------------------------------------------------------
# the model

class GPT(nn.Module):
    """GPT(config), a GPTConfig or make_config(preset, **overrides): model(idx, targets) -> (logits, loss) (forward,
    the shapes there), configure_optimizer for training, generate() for sampling (model.eval() first), num_params()."""

    def __init__(self, config):
        super().__init__()
        # fp32 weights that cannot fit (12 C^2 a block, the embeddings, a context's tables) are refused before anything
        # is allocated, which would fill memory for minutes (min: --n_embd 10**30's bytes overflow a float division)
        C, have = config.n_embd, physical_memory()
        need = 4 * (config.n_layer * 12 * C ** 2 + (config.vocab_size + 2 * config.block_size) * C)
        if have and need > have:
            raise MemoryError(f"{min(need, 2**1000) / 2**30:.3g} GiB of weights, "
                              f"more than the machine's {have / 2**30:.3g} GiB of memory")
        self.config = config
        modules = dict(wte=nn.Embedding(config.padded_vocab_size, config.n_embd))
        if config.variant == "gpt2":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, https://arxiv.org/abs/1608.05859
        # train.py --recompute_activations: keep only each block's input and run its forward again in the backward
        # pass, a fraction of the activation memory for ~20% longer steps. Per process: checkpoints do not carry it.
        self.recompute_activations = False

        if config.variant == "modern":
            # RoPE angles of every position, shared by all layers, derived (not in checkpoints); made on the CPU, as on
            # the meta device (hf.py's shape check) arange would import torch._dynamo, ~2 s of gen.py's start
            hs, cpu = config.head_dim, torch.device("cpu")
            inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, hs, 2, dtype=torch.float32, device=cpu) / hs))  # (hs/2,)
            positions = torch.arange(config.block_size, dtype=torch.float32, device=cpu)  # (T,)
            angles = torch.outer(positions, inv_freq)  # (T, hs/2)
            device = torch.get_default_device()
            self.register_buffer("rope_cos", angles.cos().to(device), persistent=False)
            self.register_buffer("rope_sin", angles.sin().to(device), persistent=False)

        # GPT-2 init: N(0, 0.02), zero biases, residual projections by 1/sqrt(2 * n_layer): a block adds two to x
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameter count, the tied wte/lm_head once. non_embedding leaves out wte and wpe: the N of the scaling-law
        papers (nanoGPT keeps wte, as it doubles as lm_head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6*N + 12*L*H*Q*T, N every parameter but wpe,
        a lookup (as nanoGPT's estimate_mfu): the tied wte/lm_head once, as lm_head."""
        cfg = self.config
        T = cfg.block_size if seq_len is None else seq_len
        N = self.num_params() + self.lm_head.weight.numel()  # all but wpe: non-embedding, and the tied head
        return float(6 * N + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T)

    def _trunk(self, idx, cache=None):
        """Everything up to and including the final norm: idx (B, T) -> (B, T, C). With a cache, the T new positions
        start at cache.pos, their keys and values are written into it, and cache.pos advances by T."""
        cfg = self.config
        B, T = idx.size()
        # all checks on Python ints: no host-device sync
        if cache is None:
            pos = 0
            if T > cfg.block_size:
                raise ValueError(f"cannot forward a sequence of length {T}: block_size is {cfg.block_size}")
        else:
            pos = cache.pos
            if pos + T > min(cache.max_len, cfg.block_size):
                raise ValueError(f"KV cache overflow: {pos} cached + {T} new positions exceeds "
                                 f"min(cache length {cache.max_len}, block_size {cfg.block_size})")
            if B != cache.batch_size:
                raise ValueError(f"batch size {B} does not match the cache's {cache.batch_size}")

        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if cfg.variant == "gpt2":
            positions = torch.arange(pos, pos + T, dtype=torch.long, device=idx.device)  # (T,)
            x = x + self.transformer.wpe(positions)  # (T, C), broadcast over B
        else:
            rope = (self.rope_cos[pos:pos + T], self.rope_sin[pos:pos + T])  # 2x (T, hs/2)
        x = self.transformer.drop(x)

        attn_mask = None
        if pos > 0 and T > 1:
            # new query i (absolute position pos+i) sees cached keys 0..pos+i
            attn_mask = torch.ones(T, pos + T, dtype=torch.bool, device=idx.device).tril(diagonal=pos)  # (T, pos+T)
        recompute = self.recompute_activations and self.training and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            if recompute:
                # the non-reentrant form: works under torch.compile, and replays dropout with the same random state
                x = torch.utils.checkpoint.checkpoint(block, x, rope, use_reentrant=False)
            else:
                kv = None if cache is None else cache.layers[i]
                x = block(x, rope, kv, pos, attn_mask)
        if cache is not None:
            cache.pos = pos + T
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(self, idx, targets=None, loss_mask=None, cache=None):
        """idx (B, T) long -> (logits (B, T, vocab_size), loss or None); with targets, the logits are detached.
        targets (B, T) long, -1 = ignore. loss_mask (B, T): loss = sum(ce * mask) / max(sum(mask), 1) over targets not
        -1 (chat fine-tuning: assistant tokens only). cache: a KVCache, written from cache.pos on (_trunk)."""
        x = self._trunk(idx, cache)
        logits = self.lm_head(x)  # (B, T, padded_vocab_size)
        loss = None
        if targets is not None:
            # the padded logits whole (a slice copies the biggest tensor); CrossEntropy's softmax is the real ids'
            flat_targets = targets.reshape(-1)  # (B*T,)
            weight = (flat_targets != -1).float()  # (B*T,) each position's share of the loss
            if loss_mask is not None:
                weight = weight * loss_mask.reshape(-1).float()
            loss = cross_entropy(logits.view(-1, logits.size(-1)), flat_targets, weight / weight.sum().clamp(min=1.0),
                                 self.config.vocab_size)  # (B*T, Vp) -> () fp32, the weighted mean
            # training needs only the loss: tracked logits would cost the compiled backward a zero gradient their size
            logits = logits.detach()
        # a view over the real vocabulary, so nobody can sample a padding id
        return logits[..., :self.config.vocab_size], loss  # (B, T, vocab_size)

    def configure_optimizer(self, weight_decay, lr, betas=(0.9, 0.95), device_type="cpu", optimizer=OPTIMIZERS[0],
                            dtype=torch.float32):
        """Muon for the weight matrices inside the blocks and AdamW for the rest (embeddings, gains, biases), or AdamW
        for all; one lr and weight decay for both, as Muon's update is scaled to AdamW's size. dtype: training's
        autocast dtype; Muon orthogonalizes in bf16 when it is bf16, else in fp32."""
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
        matrices = [p for name, p in self.named_parameters() if p.requires_grad and p.dim() == 2
                    and name.startswith("transformer.h.")] if optimizer == "muon" else []
        taken = {id(p) for p in matrices}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]  # the tied matrix once
        # decay every >=2-D tensor (matmul weights, embeddings); biases and norm gains are left alone
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # fused: one pass per tensor (~5x foreach's speed on a CPU); mps keeps the default (fused=False: no foreach)
        fused = {"fused": True} if device_type in ("cuda", "cpu") else {}
        adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, **fused)
        if optimizer == "adamw":
            return adamw
        ns_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        return MuonAdamW(Muon(matrices, lr=lr, weight_decay=weight_decay, ns_dtype=ns_dtype), adamw)

    # generation: a step's logits (_next_logits) over a KV cache (new_cache), sampled (_sample) in generate's loop

    def new_cache(self, batch_size, max_len=None, dtype=None):
        """A KVCache for batch_size rows, by default in the autocast dtype where autocast is on (k and v come out of
        the projections in it: half the memory, no casts), else the weights'."""
        cfg = self.config
        w = self.transformer.wte.weight
        if dtype is None:
            dtype = w.dtype
            if w.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(w.device.type):
                dtype = torch.get_autocast_dtype(w.device.type)
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size if max_len is None else max_len,
                       cfg.head_dim, dtype, w.device)

    def _next_logits(self, idx, cache=None):
        # idx (B, T) -> (B, vocab_size) fp32, the last position's logits only. One bf16 row on a CPU runs without
        # oneDNN, whose matrix-vector products are slower than ATen's (from 2 rows on, oneDNN is faster)
        bf16 = idx.device.type == "cpu" and (self.lm_head.weight.dtype == torch.bfloat16 or (  # weights, or autocast
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))
        skip_onednn = idx.size(0) == 1 and bf16
        with _without_onednn(skip_onednn and idx.size(1) == 1), _without_cudnn_attention(idx.device.type == "cuda"):
            x = self._trunk(idx, cache)[:, -1, :]  # (B, C)
        # a few fp32 rows on a CPU: times the transposed head (_lm_head_t); bf16 autocast would cast the copy each token
        if (x.device.type == "cpu" and x.size(0) <= 8 and not bf16
                and x.dtype == torch.float32 == self.lm_head.weight.dtype):
            logits = x @ self._lm_head_t()  # (B, C) @ (C, Vp)
        else:
            with _without_onednn(skip_onednn):
                logits = self.lm_head(x)  # (B, Vp)
        return logits[:, :self.config.vocab_size].float()  # (B, vocab_size)

    def _lm_head_t(self):
        # lm_head's weight as a contiguous (C, Vp) copy, kept between calls (making it takes 30-240 ms): a few fp32
        # rows times (Vp, C) are Vp short dot products BLAS runs far below memory speed, times (C, Vp) C long streams
        # (1.5-3.6x faster at B1, B2). Made again when the weight changes: the key catches what autograd sees; a fused
        # optimizer step and edits through .data bump no version, so 16 rows (row 0, a real id, among them) are compared
        w = self.lm_head.weight.detach()
        key = (w.device, w.data_ptr(), w._version)
        probe = w[::max(1, w.size(0) // 16)].view(torch.uint8)  # (16ish, C * itemsize) view of the bits
        if getattr(self, "_lm_head_t_key", None) != key or not torch.equal(probe, self._lm_head_t_probe):
            self._lm_head_t_cache, self._lm_head_t_key, self._lm_head_t_probe = w.t().contiguous(), key, probe.clone()
        return self._lm_head_t_cache

    @staticmethod
    def _sample(logits, context, temperature, top_k, top_p, repetition_penalty, generator, exempt=None):
        # logits (B, V) fp32, context (B, L) tokens seen so far -> (B,) next tokens; exempt (S,): ids not penalized
        if isinstance(generator, (list, tuple)):
            # one per row: each row is sampled alone, so its draws depend on neither the rows beside it nor top_k's
            # choice between k columns and the whole vocabulary for them
            return torch.cat([GPT._sample(logits[r:r + 1], context[r:r + 1], temperature, top_k, top_p,
                                          repetition_penalty, g, exempt) for r, g in enumerate(generator)])
        if repetition_penalty != 1.0:
            # CTRL: every token in the context less likely, whatever its logit's sign (at least 1e-6: fp32's 1e-46 is 0)
            repetition_penalty = max(repetition_penalty, 1e-6)
            seen = logits.gather(1, context)  # (B, L) the logits of the tokens seen
            seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
            penalized = logits.scatter(1, context, seen)
            if exempt is not None:  # (B, S) as they were
                penalized[:, exempt] = logits[:, exempt]
            logits = penalized
        if temperature == 0:
            return logits.argmax(dim=-1)
        # from the row's maximum, so a tiny temperature divides into -inf at worst, never inf (then nan); at least 1e-6,
        # as fp32 rounds 1e-46 to 0 and the maximum's 0 / 0 would be nan
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(temperature, 1e-6)
        ids = None  # vocabulary id of each column of logits when only the top_k columns are kept
        if top_k is not None and top_k < logits.size(-1):
            # softmax and multinomial over k columns, not the vocabulary (50k draws: ~8% of a cached B1 step on a CPU)
            # tokens tied with the k-th are all kept, as Hugging Face's, vLLM's and nanoGPT's top_k keep them, not the
            # ones topk happens to return (bf16 scores tie often: 8 bits of mantissa over 50k tokens). topk takes room
            # for them at about the same cost (k + 1 to 2k columns of 50k); only ties that fill it take a second topk
            top, ids = torch.topk(logits, min(top_k + 1 + top_k // 8, logits.size(-1)), dim=-1)  # sorted descending
            kth = top[:, top_k - 1:top_k]  # (B, 1)
            n = int((top >= kth).sum(dim=-1).max())  # k + the most ties in a row; one host sync
            if n == top.size(-1) < logits.size(-1):  # ties may go on past the columns taken
                top, ids = torch.topk(logits, int((logits >= kth).sum(dim=-1).max()), dim=-1)
                n = top.size(-1)
            logits, ids = top[:, :n], ids[:, :n]  # (B, n)
            if n > top_k:
                logits = logits.masked_fill(logits < kth, float("-inf"))  # (the rows with fewer ties)
        if top_p is not None and top_p < 1.0:
            # (topk's columns are sorted already)
            sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True) if ids is None else (logits, None)
            probs = F.softmax(sorted_logits, dim=-1)
            # drop a token when the more likely ones before it already reach top_p; the top token always stays
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
            drop_sorted[:, 0] = False
            drop = drop_sorted if sorted_idx is None else \
                torch.zeros_like(drop_sorted).scatter(1, sorted_idx, drop_sorted)  # back to the vocabulary's order
            logits = logits.masked_fill(drop, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        choice = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1) column
        return (choice if ids is None else ids.gather(1, choice)).squeeze(1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                 stop_tokens=(), use_cache=True, generator=None, slide=False):
        """Yields each step's next token of every row, (B,) long, so callers can stream; model.eval() first. Stops after
        max_new_tokens, once every row has yielded one of stop_tokens, or at the context's end unless slide.
        use_cache=False recomputes the same window every step (the reference path). generator: one for the batch, or
        one per row, which then samples what it would alone (gen.py --prompt_file). A FloatingPointError when the
        scores of a row still generating are nan or inf, before anything is sampled from them."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"idx must be a non-empty (B, T) tensor, got shape {tuple(idx.shape)}")
        if isinstance(generator, (list, tuple)) and len(generator) != idx.size(0):
            raise ValueError(f"{len(generator)} generators for {idx.size(0)} rows: give one per row, or one in all")
        if max_new_tokens <= 0:
            return
        block_size = self.config.block_size
        keep = max(1, block_size // 2)  # tokens kept when the window slides
        # (B, L) the tokens the model sees, never more than block_size: the (cropped) prompt, then each new token
        context = idx[:, -block_size:]
        stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=idx.device) if len(stop_tokens) else None
        stopped = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # (B,) rows that have hit a stop token

        cache = self.new_cache(idx.size(0)) if use_cache else None
        logits = self._next_logits(context, cache)  # (B, vocab_size); a cache takes the prompt in once
        for step in range(max_new_tokens):
            # activations that overflow (float16, huge weights) give nan or inf scores, which would fail multinomial
            # (on CUDA breaking the context for good) or make greedy write token 0 on and on: one host sync a step
            # checks the rows still generating for a maximum that is not finite (nan goes through amax; all -inf too)
            bad = ~torch.isfinite(logits.amax(dim=-1))  # (B,)
            if bool((bad & ~stopped).any()):
                raise FloatingPointError(f"the model's scores for new token {step + 1} are not finite (nan or inf): "
                                         f"its activations overflow")
            if stop is not None and idx.size(0) > 1:
                # a stopped row is still sampled (its tokens are ignored): bad scores there are made flat, else they
                # would fail torch.multinomial for the whole batch (one row alone returns when it stops)
                logits = logits.masked_fill((bad & stopped)[:, None], 0.0)
            # the repetition penalty looks at the window the model sees, and spares the stop tokens: a chat's history
            # holds an <|im_end|> for every turn, and penalized, replies would grow less likely to end as it grows
            tok = self._sample(logits, context, temperature, top_k, top_p, repetition_penalty, generator, stop)  # (B,)
            yield tok
            context = torch.cat((context, tok[:, None]), dim=1)  # (B, L + 1)
            if stop is not None:
                stopped |= torch.isin(tok, stop)
                if bool(stopped.all()):
                    return
            if step == max_new_tokens - 1:
                return  # don't pay for a forward whose logits nobody will use
            new = tok[:, None]  # (B, 1): one new position
            if context.size(1) > block_size:
                if not slide:
                    return  # the context is full
                # learned absolute positions rule out a rolling cache: restart the window on the most recent keep
                # tokens, all of them into the emptied cache; what slid out is dropped, so --nonstop does not slow down
                context = new = context[:, -keep:]  # (B, keep)
                if use_cache:
                    cache.reset()
            logits = self._next_logits(new if use_cache else context, cache)  # (B, vocab_size)


# -----------------------------------------------------------------------------
# generation's KV cache and the backends a decoding step switches off; the memory GPT checks its weights against

class KVCache:
    """Keys and values of every layer, k and v (n_layer, B, n_head, max_len, head_dim), preallocated: a torch.cat per
    step would copy the whole cache every token. pos: how many positions are filled; GPT._trunk writes positions
    pos..pos+T-1 and advances it."""

    def __init__(self, n_layer, batch_size, n_head, max_len, head_dim, dtype, device):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # each layer's (k, v) views, taken once: indexing k[i] and v[i] for every layer of every token are ops too
        # (not unbind's: views that one op returns several of refuse in-place writes under autograd)
        self.layers = [(self.k[i], self.v[i]) for i in range(n_layer)]
        self.batch_size, self.max_len, self.pos = batch_size, max_len, 0

    def reset(self):
        # stale entries past pos are never read, so there is no need to zero them
        self.pos = 0


@contextlib.contextmanager
def _without_onednn(active):
    """oneDNN off for CPU matmuls inside (ATen's own kernels run instead); a no-op unless active."""
    if not active or not torch.backends.mkldnn.is_available():
        yield
        return
    prev = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = prev


@contextlib.contextmanager
def _without_cudnn_attention(active):
    """SDPA's cuDNN backend off inside (flash or memory-efficient attention run instead); a no-op unless active.
    PyTorch prefers cuDNN on Hopper GPUs, which plans every new shape: ~50 ms a decoded token, its keys one longer."""
    flag = getattr(torch.backends.cuda, "enable_cudnn_sdp", None)  # torch >= 2.4
    if not active or flag is None:
        yield
        return
    prev = torch.backends.cuda.cudnn_sdp_enabled()
    flag(False)
    try:
        yield
    finally:
        flag(prev)


def physical_memory():
    """Bytes of RAM and swap the process may use: the machine's, or its cgroup's where that is less (a container's
    --memory, a systemd unit's MemoryMax); None where the system does not say (Windows)."""
    try:
        with open("/proc/meminfo") as f:  # Linux: "MemTotal:  24576000 kB", "SwapTotal: ..."
            kb = {line.split(":")[0]: int(line.split()[1])
                  for line in f if line.startswith(("MemTotal:", "SwapTotal:"))}
        machine, swap = 1024 * (kb["MemTotal"] + kb.get("SwapTotal", 0)), 1024 * kb.get("SwapTotal", 0)
        return min(machine, cgroup_memory(swap) or machine)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:  # macOS and other Unixes: RAM alone
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def cgroup_memory(swap, root="/sys/fs/cgroup", listing="/proc/self/cgroup"):
    """Bytes of memory, and of swap up to swap (the machine's), that the process's cgroup or one above it allows
    (Linux, cgroup v2 or v1), None where none sets a limit."""
    try:
        with open(listing) as f:  # "0::/user.slice/..." (v2), "4:memory:/docker/ab12..." (v1)
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    limits = []
    for _, controllers, path in (line for line in lines if len(line) == 3):
        v2 = controllers == ""
        if not v2 and "memory" not in controllers.split(","):
            continue
        base = root if v2 else os.path.join(root, "memory")
        parts = [p for p in path.split("/") if p]
        # its folder and those above it; in a container, the path may name the host's folder: its mount's root counts
        for i in range(len(parts), -1, -1):
            folder = os.path.join(base, *parts[:i])
            memory = cgroup_limit(os.path.join(folder, "memory.max" if v2 else "memory.limit_in_bytes"))
            if memory is None:
                continue
            # v2's swap limit is swap alone, v1's (where swap is accounted) memory and swap together
            both = cgroup_limit(os.path.join(folder, "memory.swap.max" if v2 else "memory.memsw.limit_in_bytes"))
            limits.append(memory + (swap if both is None else min(swap, both if v2 else max(both - memory, 0))))
    return min(limits, default=None)


def cgroup_limit(path):
    """The bytes a cgroup file such as memory.max gives, None for none: no file, "max", or v1's huge number."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" or int(text) >= 2 ** 60 else int(text)
    except (OSError, ValueError):
        return None


# -----------------------------------------------------------------------------
# the loss

class CrossEntropy(torch.autograd.Function):
    """sum_i weight_i * -log softmax(logits_i[:vocab_size])[targets_i] in fp32, its backward written out (softmax minus
    the one-hot target, times weight_i): compiled, F.cross_entropy's backward sums its one-hot gradient in one more
    N x V pass.

    vocab_size: the real ids, where the logits have padding columns: the softmax is the one gen.py samples, whatever the
    padding (an exported model pads otherwise). A log_softmax of the sliced logits (strided) is twice as slow, so the
    padded one is rescaled by the padding's share m: log q_t = log p_t - log(1 - m), gradient p / (1 - m) - onehot, 0 in
    the padding columns."""

    @staticmethod
    def forward(ctx, logits, targets, weight, vocab_size):
        # logits (N, Vp) any float dtype, targets (N,) long (-1 where weight is 0), weight (N,) fp32 -> () fp32
        ctx.compiled = torch.compiler.is_compiling()  # False when AOTAutograd traces backward: decided here
        if ctx.compiled:
            # nothing N x V is stored: backward recomputes the log-softmax in its one fused pass from the logits (bf16
            # under autocast) and each row's logsumexp, half the memory traffic of an fp32 copy
            lse = torch.logsumexp(logits.float(), dim=-1)  # (N,)
            logp = logits.float() - lse[:, None]  # (N, Vp), fused into its readers below, never stored
            saved = logits, lse
        else:
            # eager: ATen's fused log_softmax, kept for backward as F.cross_entropy does (recomputing: 3 passes more)
            logp = torch.log_softmax(logits.float(), dim=-1)  # (N, Vp)
            saved = logp, None
        targets = targets.clamp(min=0)  # an ignored position reads logit 0, times its weight 0
        ctx.vocab_size = vocab_size if vocab_size < logp.size(1) else None  # None: no padding columns
        # (N,) log(1 - m): the log of the real ids' share of the padded softmax
        log_real = torch.log1p(-torch.exp(logp[:, vocab_size:]).sum(1)) if ctx.vocab_size else None
        ctx.save_for_backward(*saved, targets, weight, log_real)
        ctx.logits_dtype = logits.dtype
        logq = logp.gather(1, targets[:, None]).squeeze(1)  # (N,) log p of each target
        return -((logq if log_real is None else logq - log_real) * weight).sum()

    @staticmethod
    def backward(ctx, grad):
        logp, lse, targets, weight, log_real = ctx.saved_tensors
        if lse is not None:  # compiled: logp holds the logits
            logp = logp.float() - lse[:, None]  # (N, Vp)
        scale = (weight * grad)[:, None]  # (N, 1)
        # the padded softmax -> the real one
        p_scale = scale if log_real is None else scale * torch.exp(-log_real)[:, None]  # (N, 1)
        if ctx.compiled:
            # one fused pass, the one-hot a compare with the column index, written in the logits' dtype (the eager form
            # compiles into three passes over an fp32 N x V; eager, this one is slower). int32: int64 compares cost more
            column = torch.arange(logp.size(1), device=logp.device, dtype=torch.int32)
            g = torch.exp(logp) * p_scale - (column == targets.int()[:, None]).float() * scale  # (N, Vp)
            if ctx.vocab_size:
                g = torch.where(column < ctx.vocab_size, g, 0.0)
            return g.to(ctx.logits_dtype), None, None, None
        g = torch.exp(logp).mul_(p_scale)  # (N, Vp) softmax ... (in place: one N x V tensor less in eager mode)
        g[torch.arange(targets.size(0), device=targets.device), targets] -= scale[:, 0]  # ... minus the one-hot
        if ctx.vocab_size:
            g[:, ctx.vocab_size:] = 0
        return g.to(ctx.logits_dtype), None, None, None


def cross_entropy(logits, targets, weight, vocab_size=None):
    # logits (N, Vp), targets (N,), weight (N,) -> () fp32; vocab_size: the real ids, the first vocab_size columns
    return CrossEntropy.apply(logits, targets, weight, logits.size(-1) if vocab_size is None else vocab_size)


# -----------------------------------------------------------------------------
# optimizers: Muon for the blocks' matrices, AdamW for the rest

def orthogonalize(G, steps=5, gram=None):
    """U V^T of G's SVD (all singular values 1), approximately, by Muon's quintic Newton-Schulz iteration, whose
    coefficients pull every singular value into about [0.7, 1.2] in 5 steps: enough for an update direction.
    G (k, m, n), a stack of k matrices -> (k, m, n), computed on the smaller side (X X^T is (k, min, min)).

    gram (default: a long side at least twice the short): the iteration on the small Gram matrix R = X X^T alone (Dao
    et al. 2026, "Gram Newton-Schulz"): X_{i+1} = Z_i X_i with Z_i = a + b R_i + c R_i^2 is Q_{i+1} = Z_i Q_i and
    R_{i+1} = Z_i R_i Z_i, all (m, m), and X_0 is multiplied once at the end: 4 m^2 n + 34 m^3 FLOPs for 5 steps, not
    20 m^2 n + 10 m^3. R squares the condition number past what half precision resolves (an eigenvalue near 0 rounds
    negative, and blows up), so there it restarts after 3 steps from X_3 = Q_3 X_0, as Dao et al. do."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = G.size(-2) > G.size(-1)
    X = G.mT if tall else G
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # the spectral norm is at most the Frobenius norm: now <= 1
    if gram is None:
        gram = X.size(-1) >= 2 * X.size(-2)
    if gram:
        restart = steps if X.element_size() >= 4 else 3  # steps on one Gram matrix
        R = X @ X.mT  # (k, m, m)
        Q = None
        for i in range(1, steps + 1):
            Z = torch.baddbmm(R, R, R, beta=b, alpha=c)  # b R + c R^2
            Z.diagonal(dim1=-2, dim2=-1).add_(a)  # + a I
            Q = Z if Q is None else Z @ Q
            if i == steps:
                break
            if i % restart == 0:  # X_i itself, and its Gram matrix afresh
                X, Q = Q @ X, None
                R = X @ X.mT
            else:
                R = Z @ (R @ Z)  # (Z X)(Z X)^T, Z symmetric
        X = Q @ X  # (k, m, n)
    else:
        for _ in range(steps):
            A = X @ X.mT  # (k, m, m)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
            X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    return X.mT if tall else X


def orthogonalize_shared(G, steps=5):
    """orthogonalize(G) under torchrun: the ranks hold the same averaged gradients, so each does its share of the
    stack and they swap results (all_gather), as modded-nanogpt and nanochat do. One process: orthogonalize(G)."""
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    k = G.size(0)
    if world == 1 or k == 1:
        return orthogonalize(G, steps)
    share = -(-k // world)  # matrices per rank; the last ranks orthogonalize zeros when world does not divide k
    if share * world > k:
        G = torch.cat([G, G.new_zeros(share * world - k, *G.shape[1:])])
    rank = dist.get_rank()
    mine = orthogonalize(G[rank * share:(rank + 1) * share], steps).contiguous()  # (share, m, n)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    return torch.cat(parts)[:k]  # (k, m, n)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weight matrices: SGD with Nesterov momentum whose update is orthogonalized, so every direction of
    the matrix moves alike, not the few that dominate the gradient. Scaled by 0.2 * sqrt(max(rows, cols)), an AdamW
    update's RMS, so AdamW's lr and decoupled weight decay carry over (Liu et al. 2025, arXiv:2502.16982). Unlike
    torch.optim.Muon (a matrix at a time, in bf16, which a CPU without bf16 emulates 3-4x slower), the matrices of one
    shape are orthogonalized together, in ns_dtype, and under torchrun the ranks share that work."""

    def __init__(self, params, lr, weight_decay=0.0, momentum=0.95, ns_steps=5, ns_dtype=torch.float32):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            if any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon optimizes 2-D weight matrices only")

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            by_shape = {}  # (short side, long side) -> params: a tall matrix joins the stack of its transpose's shape
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault((min(p.shape), max(p.shape)), []).append(p)
            for (_, long), params in by_shape.items():
                grads = [p.grad for p in params]
                for p in params:
                    if not self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                bufs = [self.state[p]["momentum_buffer"] for p in params]
                torch._foreach_lerp_(bufs, grads, 1 - mu)  # momentum: an exponential average of the gradients
                updates = torch._foreach_lerp(grads, bufs, mu)  # Nesterov: the gradient, pulled to where momentum goes
                tall = [p.size(0) > p.size(1) for p in params]
                stack = torch.stack([u.mT if t else u for u, t in zip(updates, tall)])  # (k, short, long)
                ortho = orthogonalize_shared(stack.to(self.ns_dtype), group["ns_steps"]).to(params[0].dtype)
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
                torch._foreach_add_(params, [u.mT if t else u for u, t in zip(ortho, tall)],
                                    alpha=-lr * 0.2 * math.sqrt(long))


class MuonAdamW:
    """Muon for the matrices inside the blocks and AdamW for the other parameters, stepped, cleared, saved and loaded as
    one optimizer (train.py sets the lr of every group in param_groups; a GradScaler unscales and steps it)."""

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):
        # read afresh each time: load_state_dict replaces the optimizers' group dicts
        return self.muon.param_groups + self.adamw.param_groups

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state):
        if set(state) != {"muon", "adamw"}:
            raise ValueError("not the state of Muon with AdamW")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
