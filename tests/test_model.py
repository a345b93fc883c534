"""Tests for model.py: tiny configs on CPU, the whole file runs in seconds."""

import copy
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import (GPT, OPTIMIZERS, PRESETS, GPTConfig, KVCache, Muon, cross_entropy, gelu_tanh,  # noqa: E402
                   make_config, orthogonalize, swiglu_hidden)

VARIANTS = ["gpt2", "modern"]
VOCAB = 1000  # not a multiple of 64, so padding is exercised (padded to 1024)


def tiny_model(variant="gpt2", seed=0, **kw):
    cfg = dict(block_size=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, variant=variant)
    cfg.update(kw)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**cfg)).eval()


def tokens(B, T, seed=1, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def collect(model, idx, n, **kw):
    """Run generate to the end; returns (B, steps) tokens."""
    out = list(model.generate(idx, n, **kw))
    return torch.stack(out, dim=1) if out else torch.empty(idx.size(0), 0, dtype=torch.long)


# ---------------------------------------------------------------- config / presets

@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_dims(name):
    cfg = make_config(name)
    for k, v in PRESETS[name].items():
        assert getattr(cfg, k) == v
    assert cfg.vocab_size == 50259
    assert cfg.padded_vocab_size == 50304 and cfg.padded_vocab_size % 64 == 0


def test_the_vocabulary_pads_to_the_next_multiple_of_64():
    # a custom vocabulary of 4096 ids (the demo's) is already aligned: padded further, its checkpoints would hold other
    # rows than the ones saved before, and load no more
    assert [GPTConfig(vocab_size=v).padded_vocab_size for v in (4096, 4097, 1000, 64, 1)] == [4096, 4160, 1024, 64, 64]


def test_presets_are_the_shapes_the_readme_gives():
    # test_preset_dims reads PRESETS itself, so a preset changed there passed it; a user's `--model small` names these
    shapes = {name: (c.n_layer, c.n_embd, c.n_head, c.block_size, c.variant) for name in PRESETS
              for c in [make_config(name)]}
    assert shapes == {"tiny": (4, 128, 4, 256, "modern"), "small": (6, 384, 6, 256, "gpt2"),
                      "gpt2-75m": (10, 640, 10, 1024, "gpt2"), "gpt2": (12, 768, 12, 1024, "gpt2")}


def test_gpt2_preset_is_124m():
    # meta device: shapes only, nothing allocated
    with torch.device("meta"):
        model = GPT(make_config("gpt2"))
    assert 123.5e6 < model.num_params(non_embedding=False) < 125.5e6
    assert 84e6 < model.num_params() < 86e6  # 12 layers * 12 * 768^2 plus biases and norms


def test_tiny_and_small_presets():
    tiny = GPT(make_config("tiny"))
    assert 0.5e6 < tiny.num_params() < 1.5e6
    assert tiny.num_params(non_embedding=False) > tiny.num_params()
    small = GPT(make_config("small", variant="modern", bias=False))
    assert small.config.n_layer == 6 and small.config.n_embd == 384
    assert 8e6 < small.num_params() < 13e6


def test_make_config_overrides_and_errors():
    cfg = make_config("tiny", n_layer=2, dropout=None, variant="modern")
    assert cfg.n_layer == 2 and cfg.dropout == 0.0 and cfg.variant == "modern"
    with pytest.raises(ValueError, match="tiny.*small.*gpt2-75m.*gpt2"):
        make_config("huge")
    with pytest.raises(ValueError, match="divisible"):
        make_config("tiny", n_head=3)
    with pytest.raises(ValueError, match="even head_dim"):
        make_config("tiny", n_embd=36, n_head=4, variant="modern")  # head_dim 9
    make_config("tiny", n_embd=36, n_head=4, variant="gpt2")  # fine for gpt2: no RoPE
    with pytest.raises(ValueError, match="variant"):
        make_config("tiny", variant="llama")
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        make_config("tiny", n_layers=2)
    for dropout in (1.0, -0.1):  # (1.0 would zero every activation it touches: nothing learns)
        with pytest.raises(ValueError, match=rf"dropout must be in \[0, 1\), got {dropout}"):
            make_config("tiny", dropout=dropout)


def test_swiglu_keeps_the_parameters_of_a_4x_gelu_mlp():
    # three (C, hidden) matrices hold the 8 C^2 of GELU's two (C, 4C) ones: hidden is 8C/3 rounded up to a multiple of
    # 64. A modern-variant checkpoint holds matrices of this size, and exports write it as Llama's intermediate_size
    for n_embd in (64, 128, 384, 640, 768):
        hidden = swiglu_hidden(n_embd)
        assert hidden % 64 == 0 and 0 <= hidden - 8 * n_embd / 3 < 64, (n_embd, hidden)


def test_flops_per_token():
    model = tiny_model()
    cfg = model.config
    n = model.num_params(non_embedding=False) - model.transformer.wpe.weight.numel()
    assert model.flops_per_token() == 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    assert model.flops_per_token(8) < model.flops_per_token()


@pytest.mark.parametrize("variant", ["gpt2", "modern"])
def test_flops_per_token_counts_the_matmuls_a_training_step_runs(variant):
    # counted, not restated: torch's FLOP counter over the weights' matmuls of a forward and backward (the padded
    # lm_head, SwiGLU's three matrices), plus the attention's 12 L C T (PaLM's, QK^T and AV as if not causal). The
    # estimate's only extra is 6x the biases and norm gains, well under 2% here
    from torch.utils.flop_counter import FlopCounterMode
    model = tiny_model(variant, vocab_size=1000, n_embd=64).train()
    cfg, (B, T) = model.config, (2, 32)
    x = tokens(B, T, vocab=1000)
    with FlopCounterMode(display=False) as counter:
        model(x, x)[1].backward()
    linear = sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op) in ("aten.mm", "aten.addmm"))
    counted = linear / (B * T) + 12 * cfg.n_layer * cfg.n_embd * T
    assert counted <= model.flops_per_token(T) < 1.02 * counted


# ---------------------------------------------------------------- structure / forward

def test_gpt2_param_names_and_tying():
    model = tiny_model()
    names = set(dict(model.named_parameters(remove_duplicate=False)))
    for n in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
              "transformer.h.0.ln_1.bias", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
              "transformer.h.0.attn.c_proj.weight", "transformer.h.1.ln_2.weight", "transformer.h.1.mlp.c_fc.weight",
              "transformer.h.1.mlp.c_proj.weight", "transformer.ln_f.weight", "lm_head.weight"]:
        assert n in names, n
    assert model.lm_head.weight is model.transformer.wte.weight
    # residual projections get the scaled init
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert std < 0.02 / math.sqrt(2 * model.config.n_layer) * 1.3


@pytest.mark.parametrize("variant", VARIANTS)
def test_weights_start_as_gpt2s(variant):
    # GPT-2's init, which the learning rates were tuned with: N(0, 0.02) matrices and embeddings, the residual
    # projections N(0, 0.02 / sqrt(2 n_layer)), zero biases, norms at 1. (nn.Linear's own init is uniform, with biases;
    # nn.Embedding's N(0, 1))
    model = tiny_model(variant, bias=True)
    L = model.config.n_layer
    for name, p in model.named_parameters():
        if p.dim() == 1:
            assert torch.equal(p, torch.zeros_like(p) if name.endswith(".bias") else torch.ones_like(p)), name
        else:
            want = 0.02 / math.sqrt(2 * L) if name.endswith("c_proj.weight") else 0.02
            assert abs(p.mean().item()) < want / 5 and abs(p.std().item() / want - 1) < 0.1, (name, p.std().item())


def test_non_embedding_count_leaves_out_the_embedding_tables_alone():
    # train.py's banner and the README's sizes: the N of the scaling laws (blocks and final norm), and the total with
    # the tied matrix counted once
    for variant in VARIANTS:
        model = tiny_model(variant)
        inside = sum(p.numel() for m in (model.transformer.h, model.transformer.ln_f) for p in m.parameters())
        tables = sum(model.transformer[t].weight.numel() for t in ("wte", "wpe") if t in model.transformer)
        assert model.num_params() == inside and model.num_params(non_embedding=False) == inside + tables, variant


def test_modern_has_no_wpe_or_biases():
    model = tiny_model("modern", bias=False)
    names = dict(model.named_parameters())
    assert "transformer.wpe.weight" not in names
    assert not any(n.endswith(".bias") for n in names)
    assert "rope_cos" not in model.state_dict()  # derived buffer, not checkpointed


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shapes_padding_and_initial_loss(variant):
    model = tiny_model(variant)
    assert model.transformer.wte.weight.shape == (1024, 32)
    assert model.lm_head.weight.shape == (1024, 32)
    idx = tokens(3, 17)
    logits, loss = model(idx)
    assert logits.shape == (3, 17, VOCAB) and loss is None
    logits, loss = model(idx, tokens(3, 17, seed=2))
    assert loss.shape == () and abs(loss.item() - math.log(VOCAB)) < 0.3


@pytest.mark.parametrize("variant", VARIANTS)
def test_too_long_raises(variant):
    model = tiny_model(variant)
    model(tokens(1, 32))
    with pytest.raises(ValueError, match="block_size"):
        model(tokens(1, 33))


def test_ignore_index():
    model = tiny_model(vocab_size=128)  # no padding (the padded vocabulary: test_loss_and_gradients_match_reference)
    idx, tgt = tokens(2, 10, vocab=128), tokens(2, 10, seed=3, vocab=128)
    tgt[0, :4] = -1
    logits, loss = model(idx, tgt)
    keep = tgt != -1
    manual = F.cross_entropy(logits[keep], tgt[keep])
    assert torch.allclose(loss, manual, atol=1e-6)


def test_loss_mask():
    model = tiny_model(vocab_size=128)
    idx, tgt = tokens(2, 12, vocab=128), tokens(2, 12, seed=3, vocab=128)
    mask = torch.zeros(2, 12, dtype=torch.uint8)
    mask[0, 5:9] = 1
    mask[1, 2:] = 1
    logits, loss = model(idx, tgt, loss_mask=mask)
    ce = F.cross_entropy(logits.reshape(-1, 128), tgt.reshape(-1), reduction="none")
    manual = (ce * mask.reshape(-1)).sum() / mask.sum()
    assert torch.allclose(loss, manual, atol=1e-6)
    unmasked_loss = model(idx, tgt)[1]
    assert not torch.allclose(loss, unmasked_loss)
    # bool and float masks mean the same
    assert torch.allclose(model(idx, tgt, loss_mask=mask.bool())[1], loss)
    assert torch.allclose(model(idx, tgt, loss_mask=mask.float())[1], loss)
    # targets at unmasked positions do not matter; at masked positions they do
    tgt2 = tgt.clone()
    tgt2[0, :5] = (tgt2[0, :5] + 7) % 128
    tgt2[0, 9:] = -1
    assert torch.allclose(model(idx, tgt2, loss_mask=mask)[1], loss)
    tgt3 = tgt.clone()
    tgt3[0, 6] = (tgt3[0, 6] + 7) % 128
    assert not torch.allclose(model(idx, tgt3, loss_mask=mask)[1], loss)
    # a target of -1 inside the mask is ignored, not counted as a zero loss
    tgt4 = tgt.clone()
    tgt4[1, 5] = -1
    keep = mask.reshape(-1).bool() & (tgt4.reshape(-1) != -1)
    manual = F.cross_entropy(logits.reshape(-1, 128)[keep], tgt4.reshape(-1)[keep])
    assert torch.allclose(model(idx, tgt4, loss_mask=mask)[1], manual, atol=1e-6)
    # an all-zero mask gives 0, not nan
    assert model(idx, tgt, loss_mask=torch.zeros_like(mask))[1].item() == 0.0


def test_cross_entropy_backward_is_autograds():
    # model.cross_entropy writes its backward out (faster compiled): the loss and gradient of F.cross_entropy
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 70, generator=g, requires_grad=True)
    targets = torch.randint(0, 70, (12,), generator=g)
    targets[[2, 7]] = -1
    weight = torch.rand(12, generator=g) * (targets != -1)
    ours = cross_entropy(logits, targets, weight)
    ref = (F.cross_entropy(logits, targets, ignore_index=-1, reduction="none") * weight).sum()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(3 * ours, logits)[0], torch.autograd.grad(3 * ref, logits)[0])
    # bf16 logits (the lm_head under autocast): computed in fp32, the gradient handed back in bf16
    low = logits.detach().bfloat16().requires_grad_()
    loss = cross_entropy(low, targets, weight)
    assert loss.dtype == torch.float32
    grad = torch.autograd.grad(loss, low)[0]
    assert grad.dtype == torch.bfloat16
    ref = (F.cross_entropy(low.float(), targets, ignore_index=-1, reduction="none") * weight).sum()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad.float(), torch.autograd.grad(ref, low)[0].float(), atol=1e-3, rtol=1e-2)
    # nothing to learn from: a loss of 0 and no gradient, not nan
    loss = cross_entropy(logits, torch.full((12,), -1), torch.zeros(12))
    assert loss.item() == 0.0 and not torch.autograd.grad(loss, logits)[0].any()
    # compiled, the backward takes its fused form (one pass, the one-hot by a compare): the same gradients. Inductor
    # builds fp32's kernels (C++, ~10 CPU-s from a cold cache, as CI's); the other cases take the same branch traced by
    # aot_eager, which runs the graphs dynamo and AOTAutograd make without building kernels
    for x, atol, backend in ((logits, 1e-6, "inductor"), (low, 1e-3, "aot_eager")):
        compiled = torch.compile(lambda x: cross_entropy(x, targets, weight), backend=backend)
        eager_grad = torch.autograd.grad(3 * cross_entropy(x, targets, weight), x)[0]
        torch.testing.assert_close(torch.autograd.grad(3 * compiled(x), x)[0].float(), eager_grad.float(),
                                   atol=atol, rtol=1e-2)
    # padding columns beyond the real vocabulary (64 of 70 here): the loss and gradient of the real ids' softmax, the
    # distribution generation samples, and no gradient for the padding, eager and compiled
    real = torch.where(targets >= 0, targets % 64, -1)  # targets among the real ids
    ref = (F.cross_entropy(logits[:, :64], real, ignore_index=-1, reduction="none") * weight).sum()
    want = torch.autograd.grad(3 * ref, logits)[0]
    assert not want[:, 64:].any()
    compiled = torch.compile(lambda x: cross_entropy(x, real, weight, 64), backend="aot_eager")
    for fn in (lambda x: cross_entropy(x, real, weight, 64), compiled):
        loss = fn(logits)
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(torch.autograd.grad(3 * loss, logits)[0], want)


def test_gelu_tanh_compiled_is_eagers():
    # compiled, model.gelu_tanh is written as x * sigmoid(2z) (a faster exp on a CPU than Sleef's tanh): the same
    # function and gradient as F.gelu's tanh form, out to where either saturates, in fp32 and under bf16 autocast
    x = torch.cat([torch.linspace(-30, 30, 601), torch.tensor([-1e4, 1e4, 0.0])]).requires_grad_()
    ref = F.gelu(x, approximate="tanh")
    ref_grad = torch.autograd.grad(ref.sum(), x)[0]
    compiled = torch.compile(gelu_tanh)
    y = compiled(x)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], ref_grad, atol=1e-5, rtol=1e-4)
    assert torch.equal(gelu_tanh(x), ref)  # eager: F.gelu itself
    low = x.detach().bfloat16().requires_grad_()
    y = compiled(low)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.gelu(low.float(), approximate="tanh"), atol=1e-2, rtol=1e-2)


def reference_forward(model, idx):
    """The architecture written out plainly, with an explicit causal softmax instead of SDPA."""
    cfg = model.config
    B, T = idx.shape
    nh, hs = cfg.n_head, cfg.head_dim
    tr = model.transformer
    if cfg.variant == "gpt2":
        norm = lambda ln, x: F.layer_norm(x, (cfg.n_embd,), ln.weight, ln.bias, 1e-5)
        x = tr.wte.weight[idx] + tr.wpe.weight[:T]
    else:
        norm = lambda ln, x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * ln.weight
        x = tr.wte.weight[idx]
        ang = torch.arange(T)[:, None] * 10000.0 ** (-torch.arange(0, hs, 2) / hs)  # (T, hs/2)

        def rope(t):  # rotate channel pairs (i, i + hs/2) by position * frequency
            t1, t2 = t[..., :hs // 2], t[..., hs // 2:]
            return torch.cat([t1 * ang.cos() - t2 * ang.sin(), t1 * ang.sin() + t2 * ang.cos()], -1)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for blk in tr.h:
        h = F.linear(norm(blk.ln_1, x), blk.attn.c_attn.weight, blk.attn.c_attn.bias)
        q, k, v = [t.reshape(B, T, nh, hs).transpose(1, 2) for t in h.split(cfg.n_embd, dim=-1)]
        if cfg.variant == "modern":
            q, k = rope(q), rope(k)
        att = (q @ k.transpose(-1, -2) / math.sqrt(hs)).masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, cfg.n_embd)
        x = x + F.linear(y, blk.attn.c_proj.weight, blk.attn.c_proj.bias)
        h = F.linear(norm(blk.ln_2, x), blk.mlp.c_fc.weight, blk.mlp.c_fc.bias)
        if cfg.variant == "gpt2":
            h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))  # GPT-2's GELU
        else:
            gate, up = h.chunk(2, dim=-1)
            h = gate * torch.sigmoid(gate) * up
        x = x + F.linear(h, blk.mlp.c_proj.weight, blk.mlp.c_proj.bias)
    return (norm(tr.ln_f, x) @ tr.wte.weight.T)[..., :cfg.vocab_size]


@pytest.mark.parametrize("variant,bias", [("gpt2", True), ("gpt2", False), ("modern", False), ("modern", True)])
def test_forward_matches_reference(variant, bias):
    model = tiny_model(variant, bias=bias)
    with torch.no_grad():  # make norms and biases non-trivial so a dropped one shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.5)
        for blk in model.transformer.h:  # activations of order 1, where the exact nonlinearity matters
            blk.mlp.c_fc.weight.mul_(30)
    idx = tokens(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference_forward(model, idx), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_and_gradients_match_reference(variant):
    # the training path whole, at a padded vocabulary (1000 of 1024): forward's loss is the real ids' cross-entropy
    # (CrossEntropy's vocab_size, which test_ignore_index and test_loss_mask, at 128 ids, cannot see dropped), averaged
    # over the targets that count, and its gradients are autograd's through the plain reference, the tied matrix's
    # included
    model = tiny_model(variant)
    idx, tgt = tokens(3, 32), tokens(3, 32, seed=2)
    tgt[0, :10] = -1
    mask = (tokens(3, 32, seed=4, vocab=3) > 0).to(torch.uint8)
    _, loss = model(idx, tgt, loss_mask=mask)
    loss.backward()
    ce = F.cross_entropy(reference_forward(model, idx).flatten(0, 1), tgt.flatten(), ignore_index=-1, reduction="none")
    counted = mask.flatten().float() * (tgt.flatten() != -1)
    ref = (ce * counted).sum() / counted.sum()
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    params = dict(model.named_parameters())
    for (name, p), want in zip(params.items(), torch.autograd.grad(ref, list(params.values()))):
        torch.testing.assert_close(p.grad, want, atol=1e-7, rtol=1e-4, msg=name)
    assert not model.lm_head.weight.grad[VOCAB:].any()  # the padding rows: no id, no gradient


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("T", [32, 31, 1])  # even and odd halves of the queries, and a single position
def test_explicit_cpu_attention_matches_sdpa(variant, T, monkeypatch):
    """On a CPU, short contexts in bf16 take explicit matmul attention (faster there than SDPA's flash kernel): the
    same loss and gradients as SDPA under bf16 autocast (the softmax computing in fp32), and in fp32 the same
    outputs and input gradients as SDPA's causal attention."""
    import model as model_py
    q, k, v = (torch.randn(2, 3, T, 16, generator=torch.Generator().manual_seed(i), requires_grad=True)
               for i in range(3))
    ours, ref = model_py.explicit_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(ref)
    grads = [torch.autograd.grad((out * w).sum(), (q, k, v)) for out in (ours, ref)]
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)
    idx, targets = tokens(2, T), tokens(2, T, seed=2)
    tol = 2e-2
    results = []
    for bound in (model_py.EXPLICIT_ATTENTION_MAX_T, 0):  # 0: every length goes to SDPA
        monkeypatch.setattr(model_py, "EXPLICIT_ATTENTION_MAX_T", bound)
        model = tiny_model(variant).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(idx, targets)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=tol, rtol=tol)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, atol=tol, rtol=10 * tol)


# ---------------------------------------------------------------- KV cache

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prefill", [5, 1])  # 1: gen.py's unconditional sample, which starts from <|endoftext|> alone
def test_cache_token_by_token_matches_full_forward(variant, prefill):
    model = tiny_model(variant)
    idx = tokens(2, 24)
    full, _ = model(idx)
    cache = model.new_cache(2)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (2, 2, 2, 32, 16) and cache.v.shape == cache.k.shape and cache.pos == 0
    parts = [model(idx[:, :prefill], cache=cache)[0]]
    assert cache.pos == prefill
    for t in range(prefill, 24):
        parts.append(model(idx[:, t:t + 1], cache=cache)[0])
    assert cache.pos == 24
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_chunked_prefill_matches_full_forward(variant):
    model = tiny_model(variant)
    idx = tokens(2, 24)
    full, _ = model(idx)
    cache = model.new_cache(2)
    a, _ = model(idx[:, :10], cache=cache)
    b, _ = model(idx[:, 10:21], cache=cache)  # a chunk of T > 1 at pos > 0: explicit mask
    c, _ = model(idx[:, 21:], cache=cache)
    torch.testing.assert_close(torch.cat([a, b, c], dim=1), full, atol=1e-5, rtol=0)
    # reset and reuse
    cache.reset()
    torch.testing.assert_close(model(idx[:, :24], cache=cache)[0], full, atol=1e-5, rtol=0)


def test_cache_overflow_raises():
    model = tiny_model()
    cache = model.new_cache(1, max_len=8)
    model(tokens(1, 6), cache=cache)
    with pytest.raises(ValueError, match="overflow"):
        model(tokens(1, 3), cache=cache)
    cache = model.new_cache(1, max_len=64)  # longer than block_size: block_size still limits
    model(tokens(1, 32), cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        model(tokens(1, 1), cache=cache)


def test_cache_of_another_batch_size_raises():
    # a cache for one row given two: writing them would broadcast into it, and the logits be silently wrong
    model = tiny_model()
    with pytest.raises(ValueError, match="batch size 2 does not match the cache's 1"):
        model(tokens(2, 4), cache=model.new_cache(1))


# ---------------------------------------------------------------- generate

@pytest.mark.parametrize("B", [1, 2, 9])  # a few fp32 rows take a transposed copy of the head (model.py), more do not
def test_decoding_logits_are_the_forwards_and_follow_weight_changes(B):
    model = tiny_model()
    idx = tokens(B, 7)
    with torch.no_grad():
        def check():
            full, _ = model(idx)
            torch.testing.assert_close(model._next_logits(idx), full[:, -1, :VOCAB], atol=1e-5, rtol=1e-5)
        check()
        model.lm_head.weight.mul_(-2.0)  # in place, as an optimizer step (or load_state_dict) changes it
        check()
        model.load_state_dict(tiny_model(seed=3).state_dict())
        check()
        model.lm_head.weight.data.mul_(0.5)  # through .data: no version counter moves
        check()
        model.lm_head.weight[5].mul_(-3.0)  # one row, none of the 16 compared: the version counter alone sees it
        check()
    # a step of the optimizer train.py uses: fused AdamW on a CPU updates the weights without a version bump either
    optimizer = model.configure_optimizer(0.1, 1e-2)
    _, loss = model(idx, idx)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        check()


def test_bf16_decoding_uses_the_head_itself():
    # under bf16 autocast the transposed fp32 copy of the head would be cast to bf16 again for every token (it is no
    # parameter, so autocast's weight cache skips it): small's B1 decoding ran at half speed. The head itself is used
    model = tiny_model()
    idx = tokens(1, 7)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full, _ = model(idx)
        torch.testing.assert_close(model._next_logits(idx), full[:, -1, :VOCAB].float(), atol=0, rtol=0)
    assert getattr(model, "_lm_head_t_cache", None) is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_seeded_is_reproducible(variant):
    model = tiny_model(variant)
    idx = tokens(2, 5)
    a = collect(model, idx, 20, generator=torch.Generator().manual_seed(42))
    b = collect(model, idx, 20, generator=torch.Generator().manual_seed(42))
    c = collect(model, idx, 20, generator=torch.Generator().manual_seed(43))
    assert a.shape == (2, 20) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert int(a.max()) < VOCAB
    # the cache does not change the randomness either
    d = collect(model, idx, 20, generator=torch.Generator().manual_seed(42), use_cache=False)
    assert torch.equal(a, d)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_prompt_into_the_cache_gives_full_recomputations_logits_in_bf16(variant):
    """On a CPU in bf16 the full forward pass takes the explicit attention and the cache's prefill took SDPA, whose
    rounding differs (up to 4e-3 in the logits): gen.py --no_cache sampled other text from its first token."""
    model = tiny_model(variant, block_size=64)
    idx = tokens(2, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model._next_logits(idx)
        cached = model._next_logits(idx, model.new_cache(2))
    assert torch.equal(full, cached)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_greedy_cache_equals_no_cache(variant):
    model = tiny_model(variant, block_size=64)
    idx = tokens(2, 6)
    a = collect(model, idx, 40, temperature=0)
    b = collect(model, idx, 40, temperature=0, use_cache=False)
    assert a.shape == (2, 40)
    assert torch.equal(a, b)
    # greedy really is the argmax of the full forward
    seq = torch.cat([idx, a], dim=1)
    logits, _ = model(seq[:, :-1])
    assert torch.equal(logits[:, idx.size(1) - 1:].argmax(-1), a)


def test_a_row_with_its_own_generator_samples_what_it_would_alone():
    # gen.py --prompt_file --seed: each row of a batch draws from its own distribution with its own generator, so it
    # samples what its prompt does alone; as many generators as rows, or a ValueError (not rows silently dropped)
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # peaked enough that two prompts draw apart, not so much that any seed does
    idx = tokens(3, 5)
    seeds = (7, 7, 8)
    batch = collect(model, idx, 20, generator=[torch.Generator().manual_seed(s) for s in seeds])
    for r, s in enumerate(seeds):
        alone = collect(model, idx[r:r + 1], 20, generator=torch.Generator().manual_seed(s))
        assert torch.equal(batch[r], alone[0]), r
        # (the draws follow the seed: at 30x, so peaked that any seed gave the same tokens, a batch that drew every
        # row from the first row's generator passed)
        assert not torch.equal(alone, collect(model, idx[r:r + 1], 20, generator=torch.Generator().manual_seed(99)))
    assert not torch.equal(batch[0], batch[1])  # (one seed, two prompts: two draws)
    for n in (2, 4):
        with pytest.raises(ValueError, match=f"^{n} generators for 3 rows"):
            collect(model, idx, 4, generator=[torch.Generator().manual_seed(0) for _ in range(n)])


def test_decoding_turns_cudnn_attention_off_and_back_on():
    # cuDNN builds a plan per attention shape, one per decoded token (50 ms each on an H200): decoding runs without it,
    # and leaves the switch as it found it, also when the step fails
    import model as model_mod
    default = torch.backends.cuda.cudnn_sdp_enabled()  # (off in torch 2.4, on in 2.11 and 2.13)
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        check_cudnn_attention_switch(model_mod)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(default)


def check_cudnn_attention_switch(model_mod):
    with model_mod._without_cudnn_attention(True):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with pytest.raises(KeyboardInterrupt):
        with model_mod._without_cudnn_attention(True):
            raise KeyboardInterrupt
    assert torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)  # a user's choice stays
    with model_mod._without_cudnn_attention(True):
        pass
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    with model_mod._without_cudnn_attention(False):
        assert torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generation_on_cuda_runs_no_cudnn_attention():
    from torch.profiler import ProfilerActivity, profile
    model = GPT(make_config("tiny", block_size=64, vocab_size=512, variant="gpt2")).cuda().eval()
    idx = tokens(1, 6, vocab=512).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = collect(model, idx, 12, temperature=0)
    names = {e.name for e in prof.events()}
    assert out.shape == (1, 12)
    assert "aten::scaled_dot_product_attention" in names
    assert not [n for n in names if "cudnn" in n and "attention" in n], sorted(names)
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_generate_refuses_settings_it_cannot_sample_with():
    # a library caller's mistake is a ValueError naming the setting (gen.py and serve.py check their own options): a
    # negative temperature was sampled as greedy, top_k 0 failed inside torch.topk, an empty prompt inside the model
    model = tiny_model()
    for idx, kw, words in ((tokens(1, 3), dict(temperature=-0.5), "temperature must be >= 0, got -0.5"),
                           (tokens(1, 3), dict(top_k=0), "top_k must be >= 1, got 0"),
                           (tokens(1, 0), {}, r"idx must be a non-empty \(B, T\) tensor, got shape \(1, 0\)"),
                           (tokens(1, 3)[0], {}, r"idx must be a non-empty \(B, T\) tensor, got shape \(3,\)")):
        with pytest.raises(ValueError, match=words):
            collect(model, idx, 2, **kw)


def test_generate_stops_at_stop_token():
    model = tiny_model()
    idx = tokens(1, 4)
    ref = collect(model, idx, 20, temperature=0)[0]
    j = 6
    stop = int(ref[j])
    first = int((ref == stop).nonzero()[0])  # the stop token might already occur earlier
    out = collect(model, idx, 20, temperature=0, stop_tokens=(stop, 999999))[0]
    assert torch.equal(out, ref[:first + 1])  # the stop token is yielded, then nothing
    # a batch stops once every row has stopped, each at its own step (a row's stop is remembered: with the rows stopping
    # at different steps, a batch that looked only at the latest tokens ran on to max_new_tokens)
    idx2 = torch.cat([idx, tokens(1, 4, seed=9)])
    ref2 = collect(model, idx2, 20, temperature=0)
    stops = {int(ref2[0, -1]), int(ref2[1, 4])}
    firsts = [next(i for i, t in enumerate(row.tolist()) if t in stops) for row in ref2]
    # (what the seeds give, or the test would show nothing: the rows stop apart, and when the second stops the first
    # writes no stop token)
    assert firsts[0] != firsts[1] and int(ref2[firsts.index(min(firsts)), max(firsts)]) not in stops
    out2 = collect(model, idx2, 20, temperature=0, stop_tokens=sorted(stops))
    assert out2.shape[1] == max(firsts) + 1 < 20


def peaked_model(variant):
    model = tiny_model(variant)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(12)  # a sharper distribution: one likely token, then a long flat tail
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_top_k_and_top_p(variant):
    model = peaked_model(variant)
    idx = tokens(1, 5).repeat(400, 1)  # 400 independent draws of the first token
    with torch.no_grad():
        probs = F.softmax(model(idx[:1])[0][0, -1], dim=-1)
    greedy = collect(model, idx, 8, temperature=0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(collect(model, idx, 8, top_k=1, generator=g), greedy)
    assert torch.equal(collect(model, idx, 8, top_p=1e-6, generator=g), greedy)
    assert torch.equal(collect(model, idx, 8, top_p=0.0, generator=g), greedy)  # always at least one token
    for top_k in (None, 5):  # a temperature near 0 is greedy, not inf logits and a multinomial error
        for temp in (1e-38, 1e-46, 1e-300):  # the last two are 0 in fp32: 0 / 0 would be nan
            assert torch.equal(collect(model, idx, 8, temperature=temp, top_k=top_k, generator=g), greedy)
    # a near-0 penalty (a logit divided by fp32's 0 would be inf, then nan) samples as 1e-6 does
    collect(model, idx[:4], 8, repetition_penalty=1e-46, generator=g)

    first = collect(model, idx, 1, top_k=5, generator=g)[:, 0]
    allowed = set(torch.topk(probs, 5).indices.tolist())
    assert set(first.tolist()) == allowed

    # choose top_p so the nucleus is exactly the 5 most likely tokens
    sp, si = torch.sort(probs, descending=True)
    cum = sp.cumsum(0)
    p = float(cum[3] + cum[4]) / 2
    n_keep = int(((cum - sp) < p).sum())
    assert n_keep == 5
    nucleus = set(si[:5].tolist())
    first = collect(model, idx, 1, top_p=p, generator=g)[:, 0]
    assert set(first.tolist()) == nucleus  # the token that crosses top_p is kept
    # without restriction the same draws leave the nucleus
    first = collect(model, idx, 1, generator=g)[:, 0]
    assert not set(first.tolist()) <= nucleus


@pytest.mark.parametrize("variant", VARIANTS)
def test_top_k_with_top_p(variant):
    # gen.py samples with --top_k 200 by default, so a --top_p nucleus is cut from the k best (as in Hugging Face's
    # samplers, top_p applies to their distribution): top_p chosen so that nucleus is their 5 most likely tokens
    model = peaked_model(variant)
    idx = tokens(1, 5).repeat(400, 1)
    with torch.no_grad():
        probs = F.softmax(model(idx[:1])[0][0, -1], dim=-1)
    sp, si = torch.sort(probs, descending=True)
    cum = (sp[:200] / sp[:200].sum()).cumsum(0)
    p = float(cum[3] + cum[4]) / 2
    g = torch.Generator().manual_seed(0)
    first = collect(model, idx, 1, top_k=200, top_p=p, generator=g)[:, 0]
    assert set(first.tolist()) == set(si[:5].tolist())


@pytest.mark.parametrize("top_k", [None, 4])  # 4: the path that samples among topk's columns, as gen.py's --top_k 200
def test_top_p_is_taken_from_the_tempered_distribution(top_k):
    # gen.py --temp T --top_p P: the nucleus is the smallest set of tokens holding P of the distribution sampled, the
    # one the temperature gives, as Hugging Face's samplers take it (temperature first). Cut from the untempered one, a
    # --temp 2 nucleus missed a token and a --temp 0.5 one kept a token too many
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().repeat(2000, 1)  # 2000 draws of one distribution
    no_context = torch.zeros(2000, 0, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    # temperature 2: probabilities ~ [0.38, 0.29, 0.21, 0.12], 0.7 reached with the third (untempered: the second)
    drawn = GPT._sample(logits, no_context, 2.0, top_k, 0.7, 1.0, g)
    assert set(drawn.tolist()) == {0, 1, 2}
    # temperature 0.5: ~ [0.68, 0.25, 0.06, 0.01], 0.6 reached with the first alone (untempered: the second)
    drawn = GPT._sample(logits, no_context, 0.5, top_k, 0.6, 1.0, g)
    assert set(drawn.tolist()) == {0}


def test_top_k_keeps_every_token_tied_with_the_kth():
    # as Hugging Face's TopKLogitsWarper (and vLLM's, nanoGPT's): top_k 2 of [2, 1, 1, 1, 0] keeps the three 1s, each
    # as likely as the others. Cut to exactly k columns, one of them (whichever topk returned) took all their share;
    # bf16 scores tie at --top_k 200's boundary most of the time
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]]).repeat(3000, 1)
    no_context = torch.zeros(3000, 0, dtype=torch.long)
    drawn = GPT._sample(logits, no_context, 1.0, 2, None, 1.0, torch.Generator().manual_seed(0))
    want = torch.tensor([2.0, 1.0, 1.0, 1.0, float("-inf")]).softmax(-1)
    torch.testing.assert_close(torch.bincount(drawn, minlength=5) / 3000, want, atol=0.03, rtol=0)
    # and where the k-th is not tied, the k columns alone (top_p after them as before)
    drawn = GPT._sample(logits, no_context, 1.0, 1, None, 1.0, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {0}
    # top_k 4 (not tied: the fifth is 0), then top_p 0.5 of [0.48, 0.17, 0.17, 0.17]: the first and one 1
    drawn = GPT._sample(logits, no_context, 1.0, 4, 0.5, 1.0, torch.Generator().manual_seed(0))
    assert len(set(drawn.tolist())) == 2 and 0 in drawn
    # a row without ties beside rows with them (one generator): its columns past its k-th stay out
    mixed = torch.cat([logits[:1], torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])]).repeat(1500, 1)
    drawn = GPT._sample(mixed, no_context, 1.0, 2, None, 1.0, torch.Generator().manual_seed(0))
    assert set(drawn[0::2].tolist()) == {0, 1, 2, 3} and set(drawn[1::2].tolist()) == {0, 1}


def test_a_row_with_its_own_generator_draws_alone_beside_a_row_tied_at_top_k():
    # gen.py --prompt_file --seed: a row tied at its k-th score takes more columns (here all 50: every score ties); the
    # untied row beside it still draws from its own k columns, as alone: its first token came out the same from the
    # batch's 50, but the draw used up more of its generator, and the tokens after it differed
    untied = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    no_context = torch.zeros(2, 0, dtype=torch.long)
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)]
    batch = [GPT._sample(torch.cat([torch.zeros(1, 50), untied]), no_context, 1.0, 5, None, 1.0, gens)[1]
             for _ in range(30)]
    g = torch.Generator().manual_seed(1)
    alone = [GPT._sample(untied, no_context[:1], 1.0, 5, None, 1.0, g)[0] for _ in range(30)]
    assert batch == alone


def test_the_temperature_divides_the_logits_once():
    # gen.py --temp T samples from softmax(logits / T): at T = 2 each probability goes as its square root. Divided
    # twice (T squared), --temp 2 came out flatter and --temp 0.5 sharper than asked, and greedy and T = 1 hid it
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = p.log().repeat(20000, 1)  # 20000 draws of one distribution
    no_context = torch.zeros(20000, 0, dtype=torch.long)
    for temperature in (2.0, 0.5):
        drawn = GPT._sample(logits, no_context, temperature, None, None, 1.0, torch.Generator().manual_seed(0))
        want = p ** (1 / temperature) / (p ** (1 / temperature)).sum()
        torch.testing.assert_close(torch.bincount(drawn, minlength=4) / 20000, want, atol=0.015, rtol=0)


def test_a_small_temperature_on_huge_scores_is_greedy():
    # scores finite but near fp32's limit (weights grown huge pass generate's check) are taken from their maximum
    # before the temperature divides them: 1e35 / 1e-6 alone would be inf, and the softmax of it nan
    logits = torch.tensor([[-1e35, 1e35, 0.0]])
    for temperature in (1e-6, 1e-3):
        assert GPT._sample(logits, torch.zeros(1, 0, dtype=torch.long), temperature, None, None, 1.0, None).item() == 1


def test_top_p_keeps_the_smallest_set_that_reaches_it():
    # four equally likely tokens and top_p 0.5: the first two reach it exactly, so the nucleus is those two, not three
    logits = torch.zeros(4000, 4)
    drawn = GPT._sample(logits, torch.zeros(4000, 0, dtype=torch.long), 1.0, None, 0.5, 1.0,
                        torch.Generator().manual_seed(0))
    assert len(set(drawn.tolist())) == 2


def test_repetition_penalty():
    # a seen token is made less likely whatever its logit's sign (CTRL): a negative one is multiplied, not divided,
    # which would bring it up towards 0 and make the repetition more likely
    logits = torch.tensor([[-1.0, -1.5, -3.0]])
    assert GPT._sample(logits, torch.tensor([[0]]), 0, None, None, 2.0, None).item() == 1
    assert GPT._sample(-logits, torch.tensor([[2]]), 0, None, None, 2.5, None).item() == 1  # 3.0 / 2.5 < 1.5
    model = tiny_model()
    idx = tokens(1, 4)
    plain = collect(model, idx, 30, temperature=0)[0]
    assert len(set(plain.tolist())) < 30  # an untrained greedy model loops
    out = collect(model, idx, 30, temperature=0, repetition_penalty=1e6)[0]
    seen = out.tolist() + idx[0].tolist()
    assert len(set(seen)) == len(seen)
    # stop tokens are spared: a chat's history holds an <|im_end|> a turn, and penalized, a reply grew less likely to
    # end the longer the conversation went on
    assert GPT._sample(logits, torch.tensor([[0]]), 0, None, None, 2.0, None, torch.tensor([0])).item() == 0
    scores = torch.zeros(1, model.config.padded_vocab_size)
    scores[0, 5], scores[0, 6] = 10.0, 5.0  # 5 first, 6 second
    model._next_logits = lambda *a: scores  # (1, V) whatever the context
    prompt = torch.tensor([[1, 5, 2]])  # 5 seen: penalized to 10 / 4 < 5, and 6 comes first
    assert collect(model, prompt, 1, temperature=0, repetition_penalty=4.0)[0].tolist() == [6]
    assert collect(model, prompt, 1, temperature=0, repetition_penalty=4.0, stop_tokens=(5,))[0].tolist() == [5]


def test_repetition_penalty_sees_the_window_when_sliding(monkeypatch):
    # with slide (gen.py --nonstop) the penalty is on the tokens the model sees, the window, as a cropped prompt's
    # start never was: the whole history grew without end, its cost with it, and penalized tokens long slid out
    model = tiny_model()  # block_size 32
    widths = []
    sample = GPT._sample
    monkeypatch.setattr(GPT, "_sample", staticmethod(lambda logits, context, *a: widths.append(context.size(1))
                                                     or sample(logits, context, *a)))
    for use_cache in (True, False):
        widths.clear()
        collect(model, tokens(1, 8), 100, temperature=0, repetition_penalty=1.3, slide=True, use_cache=use_cache)
        assert len(widths) == 100 and max(widths) == 32, use_cache


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_context_limit_and_slide(variant):
    model = tiny_model(variant)  # block_size 32
    idx = tokens(1, 8)
    out = collect(model, idx, 100, temperature=0)
    assert out.shape[1] == 32 - 8 + 1  # the last token is predicted from a full window, then stop
    a = collect(model, idx, 100, temperature=0, slide=True)
    assert a.shape[1] == 100
    assert torch.equal(a[:, :out.shape[1]], out)
    # what the model is fed, seen through a hook on the token embedding: the cache path prefills the prompt, then one
    # token per step; when 33 tokens would be needed it re-prefills the last block_size // 2 = 16 and goes on
    lengths = []
    hook = model.transformer.wte.register_forward_hook(lambda m, inp, o: lengths.append(inp[0].shape[1]))
    collect(model, idx, 45, temperature=0, slide=True)
    assert lengths == [8] + [1] * 24 + [16] + [1] * 16 + [16] + [1] * 2  # slides twice
    lengths.clear()
    collect(model, idx, 45, temperature=0, slide=True, use_cache=False)
    assert lengths == list(range(8, 33)) + list(range(16, 33)) + list(range(16, 19))
    hook.remove()
    # the re-prefilled cache sees the same window as recomputing from scratch
    b = collect(model, idx, 100, temperature=0, slide=True, use_cache=False)
    assert torch.equal(a, b)


def test_generate_long_prompt_is_cropped():
    model = tiny_model()
    idx = tokens(1, 50)
    a = collect(model, idx, 5, temperature=0, slide=True)
    b = collect(model, idx[:, -32:], 5, temperature=0, slide=True)
    assert a.shape[1] == 5 and torch.equal(a, b)
    # the window the model sees is the prompt's last block_size tokens, whole: full from the start, it gives the token
    # those predict and stops (a window cut one short would give a second)
    for T in (32, 50):
        out = collect(model, tokens(1, T), 5, temperature=0)
        assert out.tolist() == [[int(model(tokens(1, T)[:, -32:])[0][0, -1].argmax())]], T


@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_that_overflow_at_run_time_stop_generation_before_any_sampling(variant):
    # finite weights whose activations overflow (load_model refuses only nan or inf weights) gave nan scores: sampling
    # failed in torch.multinomial (a device-side assert on CUDA) and greedy took the nan for the maximum, token 0
    # on and on, without a word
    model = tiny_model(variant)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(3e38)  # the head's dot products overflow
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for temperature, top_k, use_cache in ((0, None, True), (1.0, None, True), (1.0, 5, False), (0, None, False)):
        with pytest.raises(FloatingPointError, match=r"^the model's scores for new token 1 are not finite"):
            collect(model, tokens(2, 4), 5, temperature=temperature, top_k=top_k, use_cache=use_cache)
    # a row that has hit its stop token no longer counts: the others go on (generate goes on computing every row), and
    # sampling, which still draws for the stopped row, does not fail on its bad scores (gen.py --prompt_file's batches
    # at the default --temp 0.8: torch.multinomial's error, a device-side assert on CUDA)
    for sampling in (dict(temperature=0), dict(temperature=0.8), dict(top_k=5), dict(top_p=0.9)):
        model = tiny_model(variant)
        stop, steps = 7, []

        def next_logits(idx, cache=None):
            logits = GPT._next_logits(model, idx, cache)  # (2, V)
            logits[:, stop] = float("-inf")
            if not steps:
                logits[1, stop] = 100.0  # row 1 stops at its first token
            else:
                logits[1] = float("nan")  # then its scores go bad
            steps.append(1)
            return logits

        model._next_logits = next_logits  # (the instance attribute shadows the method generate calls)
        out = collect(model, tokens(2, 4), 6, stop_tokens=(stop,), generator=torch.Generator().manual_seed(0),
                      **sampling)
        assert out.shape == (2, 6) and out[1, 0] == stop and int(out[0].eq(stop).sum()) == 0, sampling


def test_generate_streams_without_grad():
    model = tiny_model()
    grad_modes = []
    model.transformer.wte.register_forward_hook(lambda m, inp, o: grad_modes.append(torch.is_grad_enabled()))
    gen = model.generate(tokens(3, 4), 10)
    tok = next(gen)  # a generator: one (B,) tensor per step
    assert tok.shape == (3,) and tok.dtype == torch.long
    assert len(list(gen)) == 9
    assert len(grad_modes) == 10 and not any(grad_modes)


def test_cache_dtype_follows_autocast():
    model = tiny_model()
    assert model.new_cache(1).k.dtype == torch.float32
    assert model.new_cache(1, dtype=torch.bfloat16).k.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_cache(2)
        assert cache.k.dtype == torch.bfloat16
        idx = tokens(2, 12)
        full, _ = model(idx)
        a, _ = model(idx[:, :7], cache=cache)
        b, _ = model(idx[:, 7:], cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1).float(), full.float(), atol=0.05, rtol=0.05)
    # a cache of another dtype than the one the model computes in (new_cache's dtype): what it holds is cast to the
    # queries' dtype, not a dtype mismatch inside attention
    cache = model.new_cache(2, dtype=torch.bfloat16)
    a, _ = model(idx[:, :7], cache=cache)
    b, _ = model(idx[:, 7:], cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1), model(idx)[0], atol=0.05, rtol=0.05)


# ---------------------------------------------------------------- training

def test_configure_optimizer_groups():
    model = tiny_model()
    opt = model.configure_optimizer(weight_decay=0.1, lr=1e-3, optimizer="adamw")
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params(non_embedding=False)  # every parameter once (the tied matrix too)

    # the default: Muon takes the blocks' weight matrices, AdamW the embedding (tied to lm_head), gains and biases
    opt = model.configure_optimizer(weight_decay=0.1, lr=1e-3)
    (muon,), (decay, no_decay) = opt.muon.param_groups, opt.adamw.param_groups
    block_matrices = {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in muon["params"]} == block_matrices and len(block_matrices) == 4 * 2
    assert {names[id(p)] for p in decay["params"]} == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert muon["weight_decay"] == decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(opt.param_groups) == 3 and all(g["lr"] == 1e-3 for g in opt.param_groups)
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params(non_embedding=False)
    with pytest.raises(ValueError, match="optimizer must be one of muon, adamw"):
        model.configure_optimizer(0.1, 1e-3, optimizer="sgd")


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_orthogonalize_sets_every_singular_value_near_one(shape):
    # G = U S V^T with singular values from 1 down to 0.01: the result keeps U and V and brings every one of them near 1
    g = torch.Generator().manual_seed(0)
    k = min(shape)
    u = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=g))[0][:, :k]
    v = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g))[0][:, :k]
    G = u @ torch.diag(torch.logspace(0, -2, k)) @ v.T
    O = orthogonalize(torch.stack([G, 3 * G]))  # a stack: each matrix on its own, whatever its scale
    assert O.shape == (2, *G.shape)
    torch.testing.assert_close(O[1], O[0], rtol=0, atol=1e-4)  # fp32 rounding of the Gram form (test below)
    O = O[0]
    D = u.T @ O @ v  # (k, k): diagonal when O has G's singular vectors
    assert (D - torch.diag(D.diagonal())).abs().max() < 1e-4
    # the quintic iteration leaves them in about [0.7, 1.2] rather than converging to 1 (the smallest grew 68x here)
    assert D.diagonal().min() > 0.6 and D.diagonal().max() < 1.25, D.diagonal()


@pytest.mark.parametrize("shape", [(4, 48, 16), (3, 16, 64)])
def test_orthogonalize_on_the_gram_matrix_is_the_same_iteration(shape):
    # the Gram form (fp32 matrices twice as long as wide) against the plain one in fp64: the same result, also for a
    # low-rank gradient (rank 4) whose Gram matrix has many eigenvalues that are 0 up to rounding
    g = torch.Generator().manual_seed(0)
    k, m, n = shape
    for G in (torch.randn(*shape, generator=g),
              torch.randn(k, m, 4, generator=g) @ torch.randn(k, 4, n, generator=g)):
        plain = orthogonalize(G.double(), gram=False)
        torch.testing.assert_close(orthogonalize(G.double(), gram=True), plain, rtol=0, atol=1e-12)  # exact maths
        torch.testing.assert_close(orthogonalize(G).double(), plain, rtol=0, atol=1e-4)  # fp32, the Gram form
        torch.testing.assert_close(orthogonalize(G, gram=False).double(), plain, rtol=0, atol=1e-4)
        # bf16 (Muon where training runs in bf16): the Gram form restarts after 3 steps, so rounding does not blow the
        # low-rank stack's singular values up (to ~25,000 without the restart), and it strays from fp64 no more than
        # the plain form does in bf16
        low = G.bfloat16()
        ours, theirs = orthogonalize(low).double(), orthogonalize(low, gram=False).double()
        assert torch.linalg.matrix_norm(ours, ord=2).max() < 1.3
        assert (ours - plain).norm() < 1.2 * (theirs - plain).norm() + 0.02 * plain.norm()


def test_muon_steps_along_nesterov_momentum(monkeypatch):
    """Before orthogonalization, the update is the gradient pulled towards the momentum (Nesterov), scaled to AdamW's
    RMS by 0.2 sqrt(the longer side): checked over two steps with the orthogonalization made the identity."""
    import model as model_py
    monkeypatch.setattr(model_py, "orthogonalize_shared", lambda x, steps: x)
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 6))
    start, lr, mu = p.detach().clone(), 0.1, 0.95
    opt = Muon([p], lr=lr, momentum=mu)
    g1, g2 = torch.randn(4, 6), torch.randn(4, 6)
    buf = torch.zeros(4, 6)
    want = start.clone()
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        buf = mu * buf + (1 - mu) * g
        want -= lr * 0.2 * math.sqrt(6) * ((1 - mu) * g + mu * buf)
    assert torch.allclose(p.detach(), want, atol=1e-6)


def test_muon_decays_its_weights_as_adamw_does(monkeypatch):
    """--weight_decay reaches Muon's matrices, decoupled as AdamW's: each step multiplies them by 1 - lr * weight_decay,
    then adds the update (the orthogonalization made the identity, as above)."""
    import model as model_py
    monkeypatch.setattr(model_py, "orthogonalize_shared", lambda x, steps: x)
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 6))
    start, lr, mu, wd = p.detach().clone(), 0.1, 0.95, 0.5
    opt = Muon([p], lr=lr, weight_decay=wd, momentum=mu)
    g = torch.randn(4, 6)
    p.grad = g.clone()
    opt.step()
    want = start * (1 - lr * wd) - lr * 0.2 * math.sqrt(6) * ((1 - mu) * g + mu * (1 - mu) * g)
    assert torch.allclose(p.detach(), want, atol=1e-6)


def test_muon_state_round_trips_exactly():
    # two steps, save, two more, against a copy loaded from the save: the momentum buffers carry the run on exactly
    def run(model, opt, steps, seed):
        for i in range(steps):
            _, loss = model(tokens(2, 16, seed=seed + i), tokens(2, 16, seed=seed + 50 + i))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    a = tiny_model("modern").train()
    opt_a = a.configure_optimizer(0.1, 1e-2)
    run(a, opt_a, 2, seed=0)
    # copies: state_dict() hands out the live tensors, which the next steps change in place
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(opt_a.state_dict())
    run(a, opt_a, 2, seed=10)
    b = tiny_model("modern").train()
    b.load_state_dict(saved_model)
    opt_b = b.configure_optimizer(0.1, 1e-2)
    opt_b.load_state_dict(saved_opt)
    assert all(g["lr"] == 1e-2 for g in opt_b.param_groups)  # groups read afresh after loading
    run(b, opt_b, 2, seed=10)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(ValueError, match="not the state of Muon with AdamW"):
        opt_b.load_state_dict(a.configure_optimizer(0.1, 1e-2, optimizer="adamw").state_dict())
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        Muon([a.transformer.ln_f.weight], lr=1e-3)


def test_muon_with_adamw_under_a_grad_scaler():
    # fp16 training (GPUs without bf16) scales the loss: the scaler unscales and steps Muon and AdamW as one optimizer,
    # and skips the whole step when a gradient is not finite
    model = tiny_model("modern").train()
    opt = model.configure_optimizer(0.1, 1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    x, y = tokens(2, 16), tokens(2, 16, seed=2)
    before = [p.detach().clone() for p in model.parameters()]
    for bad in (False, True):
        _, loss = model(x, y)
        scaler.scale(loss * (float("inf") if bad else 1.0)).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        after = [p.detach().clone() for p in model.parameters()]
        moved = [not torch.equal(a, b) for a, b in zip(before, after)]
        assert (not any(moved)) if bad else all(moved), (bad, moved)
        before = after
    assert scaler.get_scale() == 2.0 ** 9  # halved by the skipped step


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_overfits_a_fixed_batch(variant, optimizer):
    model = tiny_model(variant, vocab_size=256, n_embd=64, n_head=4).train()
    x = tokens(4, 32, vocab=256)
    y = tokens(4, 32, seed=5, vocab=256)
    opt = model.configure_optimizer(weight_decay=0.0, lr=1e-2, optimizer=optimizer)
    first = None
    for _ in range(50):
        _, loss = model(x, y)
        first = loss.item() if first is None else first
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, (first, loss.item())


@pytest.mark.parametrize("variant", VARIANTS)
def test_recompute_activations_gives_the_same_gradients(variant):
    # the blocks run twice, the second time in the backward pass: dropout must draw the same masks, and every
    # gradient must come out as without recomputation
    x, y = tokens(3, 32), tokens(3, 32, seed=2)
    grads = []
    for recompute in (False, True):
        model = tiny_model(variant, dropout=0.2).train()
        model.recompute_activations = recompute
        torch.manual_seed(7)
        _, loss = model(x, y)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        assert model.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-5, atol=1e-7, msg=n)
    # evaluation and generation keep no graph, so they never recompute
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], tiny_model(variant, dropout=0.2).eval()(x)[0])


_PEAK_MEMORY = """
import torch
from model import GPT, make_config
def kib(field):  # this process's resident memory now (VmRSS) or at its peak (VmHWM)
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1])
torch.manual_seed(0)
model = GPT(make_config("tiny", n_layer=8, vocab_size=512)).train()
x = torch.randint(0, 512, (4, 256))
for recompute in (False, True):
    model.recompute_activations = recompute
    model(x[:1], x[:1])[1].backward()  # a first call's allocations (thread pools, kernels' scratch) before the baseline
    model.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak starts again from here
    before = kib("VmRSS")
    model(x, x)[1].backward()
    model.zero_grad(set_to_none=True)
    print(kib("VmHWM") - before)
"""


def test_recompute_activations_saves_memory():
    # peak resident memory of one training forward and backward pass without recomputation, then with it, in a fresh
    # process; glibc is told to hand every freed block above 64 KiB back at once, so each peak is what its step
    # allocates, not what the allocator kept from earlier (the peak is reset between the two: one process is half
    # the time of two, most of which is torch's import)
    import subprocess
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("measures memory through Linux's /proc")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _PEAK_MEMORY], cwd=root, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    peak = dict(zip(("0", "1"), (int(kib) / 1024 for kib in r.stdout.split())))  # MiB
    # 8 blocks x 4 x 256 tokens peak at ~105 MiB, recomputed at ~22 (one block's activations at a time; 8 x 256:
    # ~210 and ~40, 2.2 CPU-s more for the same ratio)
    assert peak["1"] < 0.5 * peak["0"], peak
