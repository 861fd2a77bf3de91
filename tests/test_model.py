"""Step 4: the GPT against Hugging Face's GPT-2, its attention paths against each other, KV-cached
generation against full recomputation, training sanity, and sampling rules. CPU, no files, no
network."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import model
import slm.head_loss as head_loss_module
from model import GPT, GPTConfig

SMALL = GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=4, n_embd=64, dropout=0.1)
# Generation tests run hundreds of steps: a small vocabulary keeps the LM head from dominating them.
GEN = GPTConfig(vocab_size=4096, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def make(config: GPTConfig, seed: int = 0, scale: float = 0.0) -> GPT:
    """A model in eval mode; scale > 0 also perturbs every tensor (biases, LayerNorm gains too), so
    that a mapping mistake or a zero-initialised tensor cannot hide behind the default init."""
    torch.manual_seed(seed)
    m = GPT(config).eval()
    if scale:
        with torch.no_grad():
            for name, p in m.named_parameters():
                # LayerNorm gains around 1
                base = 1.0 if p.dim() == 1 and name.endswith(".weight") else 0.0
                p.copy_(base + scale * torch.randn_like(p))
    return m


@pytest.fixture(autouse=True)
def _restore_attention_path():
    yield
    model.CausalSelfAttention.use_sdpa = True


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small matrices on a shared 2-core machine: one torch thread is several times faster than two
    threads that wait for each other (measured: 300-step generation 1.0 s vs 7.5 s at load 4)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_ids(shape, seed=1, vocab=50257):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- size, init, groups


def test_default_config_size_and_quiet_constructor(capsys):
    m = GPT(GPTConfig())
    assert capsys.readouterr() == ("", "")  # the constructor prints nothing
    assert m.num_params() == 51_213_824
    assert 50e6 <= m.num_params() <= 60e6
    assert m.lm_head.weight is m.transformer.wte.weight  # tied
    # an independent count: every tensor of the state dict, the tied matrix once
    sd = m.state_dict()
    assert m.num_params() == sum(t.numel() for k, t in sd.items() if k != "lm_head.weight")


def test_init_statistics_and_flops():
    c = GPTConfig(n_layer=8, n_embd=256, n_head=4, block_size=128, dropout=0.0)
    m = GPT(c)
    proj = torch.cat([m.transformer.h[i].attn.c_proj.weight.flatten() for i in range(c.n_layer)])
    fc = torch.cat([m.transformer.h[i].mlp.c_fc.weight.flatten() for i in range(c.n_layer)])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * c.n_layer), rel=0.05)
    assert fc.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    biases = [p for n, p in m.named_parameters() if n.endswith(".bias")]
    assert biases and all(torch.all(b == 0) for b in biases)
    # nanoGPT's estimate_mfu leaves position embeddings out
    n = m.num_params() - c.block_size * c.n_embd
    assert m.flops_per_token() == 6 * n + 12 * c.n_layer * c.n_embd * c.block_size
    # the used-rows head multiplies head_rows of the tied matrix's vocab_size rows
    skipped = 6 * (c.vocab_size - 100) * c.n_embd
    assert m.flops_per_token(head_rows=100) == m.flops_per_token() - skipped


def test_optim_groups_decay_only_matrices_each_parameter_once():
    m = GPT(SMALL)
    decay, no_decay = m.optim_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(
        p.dim() < 2 for p in no_decay["params"]
    )
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    assert sum(p.numel() for p in decay["params"] + no_decay["params"]) == m.num_params()
    torch.optim.AdamW(m.optim_groups(0.1), lr=1e-3)  # accepted as is


# ----------------------------------------------------------------------------- against Hugging Face
# GPT-2


def to_hf(m: GPT):
    """The same weights in transformers' GPT2LMHeadModel (its Conv1D stores weights transposed)."""
    transformers = pytest.importorskip("transformers")
    c = m.config
    hf_config = transformers.GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        # 0.5 x (1 + erf(x / sqrt 2)): nn.GELU's exact form, computed apart
        activation_function="gelu_python",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
    )
    hf_config._attn_implementation = "eager"  # its own masked softmax, not SDPA
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    sd = {}
    for k, v in m.state_dict().items():
        if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            v = v.t()
        sd[k] = v
    if not c.bias:  # our bias-free layers are GPT-2 layers with zero biases
        for k, v in hf.state_dict().items():
            if k.endswith(".bias") and k not in sd:
                sd[k] = torch.zeros_like(v)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if k != "lm_head.weight"], (
        missing,
        unexpected,
    )
    hf.tie_weights()
    assert torch.equal(hf.lm_head.weight, m.lm_head.weight)
    return hf


@pytest.mark.parametrize("bias", [True, False])
def test_logits_match_hugging_face_gpt2_small(bias):
    m = make(
        GPTConfig(block_size=64, n_layer=3, n_head=4, n_embd=64, dropout=0.1, bias=bias), scale=0.05
    )
    hf = to_hf(m)
    idx = random_ids((3, 64))
    with torch.no_grad():
        ours, _ = m(idx)
        theirs = hf(idx).logits
    assert ours.shape == (3, 64, 50257)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_logits_match_hugging_face_gpt2_default_config():
    m = make(GPTConfig(), scale=0.02)
    hf = to_hf(m)
    idx = random_ids((2, 24))
    with torch.no_grad():
        ours, _ = m(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_causality(use_sdpa):
    model.CausalSelfAttention.use_sdpa = use_sdpa
    m = make(SMALL, scale=0.05)
    idx = random_ids((2, 40))
    t = 25
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 50257
    with torch.no_grad():
        a, _ = m(idx)
        b, _ = m(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=0, rtol=0)
    assert (a[:, t:] - b[:, t:]).abs().amax(dim=-1).min() > 0  # and every later position sees it


def test_sdpa_equals_plain_attention_full_and_chunked_with_cache():
    m = make(SMALL, scale=0.05)
    idx = random_ids((2, 50))
    with torch.no_grad():
        sdpa, _ = m(idx)
        model.CausalSelfAttention.use_sdpa = False
        plain, _ = m(idx)
        # the prompt fed in uneven chunks through the cache: the causal mask of a query chunk of T
        # tokens after S - T cached ones is tril(diagonal=S - T), on both paths
        for use_sdpa in (False, True):
            model.CausalSelfAttention.use_sdpa = use_sdpa
            caches = [{} for _ in m.transformer.h]
            chunks = [
                m(idx[:, a:b], caches=caches)[0] for a, b in [(0, 17), (17, 18), (18, 41), (41, 50)]
            ]
            torch.testing.assert_close(torch.cat(chunks, dim=1), plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(sdpa, plain, atol=1e-5, rtol=0)


def test_cpu_bfloat16_training_windows_take_the_math_kernel_and_match_the_plain_path(monkeypatch):
    """On a CPU in bfloat16 with gradients, causal windows up to CPU_BF16_MATH_ATTENTION_MAX_T
    tokens run SDPA's math kernel (flash switched off while it runs); longer windows, no
    gradients and float32 keep SDPA's own choice. The loss and gradients on the math kernel are
    the plain masked-softmax path's."""
    flash_on = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        flash_on.append(torch.backends.cuda.flash_sdp_enabled())
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    m = make(replace(SMALL, dropout=0.0), scale=0.05).train()
    idx, targets = random_ids((2, 40)), random_ids((2, 40), seed=2)

    def step(dtype, grad=True):
        flash_on.clear()
        m.zero_grad(set_to_none=True)
        with (
            torch.set_grad_enabled(grad),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"),
        ):
            _, loss = m(idx, targets)
        if grad:
            loss.backward()
        return (
            loss.item(),
            [p.grad.float().clone() for p in m.parameters()] if grad else None,
            list(flash_on),
        )

    loss, grads, seen = step("bf16")
    # and back on after
    assert seen == [False] * SMALL.n_layer and torch.backends.cuda.flash_sdp_enabled()
    assert step("bf16", grad=False)[2] == [True] * SMALL.n_layer
    assert step("f32")[2] == [True] * SMALL.n_layer
    monkeypatch.setattr(model, "CPU_BF16_MATH_ATTENTION_MAX_T", 32)  # 40 tokens: over the limit
    assert step("bf16")[2] == [True] * SMALL.n_layer

    model.CausalSelfAttention.use_sdpa = False
    plain_loss, plain_grads, _ = step("bf16")
    assert loss == pytest.approx(plain_loss, abs=2e-3)
    for g, h in zip(grads, plain_grads):
        assert (g - h).norm() <= 0.02 * h.norm() + 1e-6


def test_forward_rejects_more_than_block_size():
    m = make(SMALL)
    with pytest.raises(ValueError, match="block_size"):
        m(random_ids((1, SMALL.block_size + 1)))


# ----------------------------------------------------------------------------- generation


def full_recompute(m: GPT, idx, n, temperature=0.0, top_k=None, top_p=None, generator=None):
    """nanoGPT's generate: the whole (cropped) context through the public forward at every step."""
    for _ in range(n):
        logits, _ = m(idx[:, -m.config.block_size :])
        last = logits[:, -1, :]  # (B, vocab)
        if temperature == 0:
            nxt = last.argmax(-1)
        else:
            nxt = GPT._sample(last, temperature, top_k, top_p, generator)
        idx = torch.cat([idx, nxt[:, None]], dim=1)
    return idx


@pytest.mark.parametrize("prompt_len", [5, 45])  # short, and longer than block_size
def test_kv_cached_greedy_equals_full_recompute_past_block_size(prompt_len):
    m = make(GEN, seed=3, scale=0.3)  # large weights: varied, non-repeating greedy output
    idx = random_ids((2, prompt_len), seed=4, vocab=GEN.vocab_size)
    with torch.no_grad():
        expected = full_recompute(m, idx, 300)
    got = m.generate(idx, 300, temperature=0.0)
    assert got.shape == (2, prompt_len + 300)
    assert torch.equal(got[:, :prompt_len], idx)
    assert got.tolist() == expected.tolist()
    # the comparison was not of a constant stream
    assert len(set(got[0, prompt_len:].tolist())) > 20


def test_kv_cached_sampling_equals_full_recompute_with_the_same_seed():
    m = make(GEN, seed=5, scale=0.1)
    idx = random_ids((3, 10), seed=6, vocab=GEN.vocab_size)
    with torch.no_grad():
        expected = full_recompute(m, idx, 60, 0.8, 50, 0.9, torch.Generator().manual_seed(7))
    got = m.generate(
        idx, 60, temperature=0.8, top_k=50, top_p=0.9, generator=torch.Generator().manual_seed(7)
    )
    assert got.tolist() == expected.tolist()


def test_stream_yields_the_tokens_generate_returns_one_at_a_time():
    m = make(SMALL, scale=0.1)
    idx = random_ids((1, 4))
    stream = m.generate_stream(idx, 12, generator=torch.Generator().manual_seed(0))
    first = next(stream)  # produced before the rest is computed
    assert first.shape == (1,) and first.dtype == torch.long
    toks = [int(first)] + [int(t) for t in stream]
    got = m.generate(idx, 12, generator=torch.Generator().manual_seed(0))
    assert got[0, 4:].tolist() == toks


def test_prompt_longer_than_block_size_keeps_its_last_block_size_tokens():
    m = make(SMALL, scale=0.1)
    idx = random_ids((1, 150))
    got = m.generate(idx, 10, temperature=0.0)
    cropped = m.generate(idx[:, -SMALL.block_size :], 10, temperature=0.0)
    assert got.shape == (1, 160) and torch.equal(got[:, :150], idx)
    assert torch.equal(got[:, 150:], cropped[:, SMALL.block_size :])


def test_stops_at_eos_padding_rows_that_finished_first():
    m = make(SMALL, seed=2, scale=0.3)
    idx = random_ids((2, 6), seed=8)
    free = m.generate(idx, 30, temperature=0.0)[:, 6:]  # no eos: 30 new tokens per row
    eos = int(free[0, 4])
    first = [row.index(eos) if eos in row else None for row in free.tolist()]
    got = m.generate(idx, 30, temperature=0.0, eos_id=eos)[:, 6:]
    n = 30 if None in first else max(first) + 1
    assert got.shape == (2, n)
    for r, f in enumerate(first):
        if f is None:
            assert got[r].tolist() == free[r].tolist()
        else:  # the row up to and including its eos, then eos until every row is done
            assert got[r, : f + 1].tolist() == free[r, : f + 1].tolist()
            assert (got[r, f:] == eos).all()
    assert list(m.generate_stream(idx[:1], 30, temperature=0.0, eos_id=eos))[-1].item() == eos


def test_seeded_generator_gives_the_same_sample_twice():
    m = make(SMALL, scale=0.1)
    idx = random_ids((2, 5))
    a = m.generate(idx, 40, temperature=1.0, generator=torch.Generator().manual_seed(123))
    b = m.generate(idx, 40, temperature=1.0, generator=torch.Generator().manual_seed(123))
    c = m.generate(idx, 40, temperature=1.0, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_new_tokens_and_bad_arguments():
    m = make(SMALL)
    idx = random_ids((1, 3))
    assert torch.equal(m.generate(idx, 0), idx)
    for kwargs in ({"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            m.generate(idx, 1, **kwargs)


# ----------------------------------------------------------------------------- sampling rules


def allowed_top_k(logits: torch.Tensor, k: int) -> set[int]:
    return set(sorted(range(len(logits)), key=lambda i: -logits[i].item())[:k])


def allowed_top_p(logits: torch.Tensor, p: float) -> set[int]:
    """The smallest set of likeliest tokens whose total probability reaches p (in float64)."""
    probs = torch.softmax(logits.double(), dim=-1).tolist()
    kept, total = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        kept.add(i)
        total += probs[i]
        if total >= p:
            break
    return kept


@pytest.mark.parametrize(
    "top_k, top_p", [(5, None), (1, None), (None, 0.5), (None, 0.9), (20, 0.6)]
)
def test_top_k_top_p_never_sample_outside_the_allowed_set(top_k, top_p):
    logits = 3.0 * torch.randn(200, generator=torch.Generator().manual_seed(top_k or 0))
    allowed = set(range(200))
    if top_k is not None:
        allowed &= allowed_top_k(logits, top_k)
    if top_p is not None:  # top-p applies to what top-k left, renormalised
        masked = torch.full_like(logits, float("-inf"))
        masked[list(allowed)] = logits[list(allowed)]
        allowed &= allowed_top_p(masked, top_p)
    assert 1 <= len(allowed) < 200
    draws = GPT._sample(
        logits.expand(20000, -1), 1.0, top_k, top_p, torch.Generator().manual_seed(1)
    )
    seen = set(draws.tolist())
    assert seen <= allowed
    # small sets are hit in full: the filter is not too tight
    assert seen == allowed or len(allowed) > 30


def test_top_k_one_is_greedy_in_generate():
    m = make(SMALL, scale=0.1)
    idx = random_ids((2, 5))
    sampled = m.generate(idx, 20, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, m.generate(idx, 20, temperature=0.0))


# ----------------------------------------------------------------------------- training sanity


def test_initial_loss_is_log_vocab():
    m = make(SMALL, seed=0)
    idx, targets = random_ids((4, 64), seed=1), random_ids((4, 64), seed=2)
    with torch.no_grad():
        _, loss = m(idx, targets)
    assert abs(loss.item() - math.log(50257)) < 0.1


def test_initial_loss_of_the_default_model_is_log_vocab_plus_the_logit_variance_term():
    """The unit-variance final LayerNorm output times the tied N(0, 0.02) matrix gives logits of
    variance s2 = 0.02^2 * n_embd (0.205 at width 512), and E[logsumexp] = ln V + s2 / 2: a fresh
    default model starts near 10.93, about 0.10 above ln(50257) = 10.82."""
    c = GPTConfig()
    m = make(c, seed=0)
    idx, targets = random_ids((2, 128), seed=1), random_ids((2, 128), seed=2)
    with torch.no_grad():
        _, loss = m(idx, targets)
    predicted = math.log(c.vocab_size) + 0.02**2 * c.n_embd / 2
    assert abs(loss.item() - predicted) < 0.05


def test_small_model_overfits_one_batch():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=2048, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0))
    x, y = random_ids((4, 32), seed=1, vocab=2048), random_ids((4, 32), seed=2, vocab=2048)
    opt = torch.optim.AdamW(m.optim_groups(0.0), lr=1e-2)
    for _ in range(60):  # random targets: only memorising brings the loss from ln(2048) = 7.6 down
        _, loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, loss = m.eval()(x, y)
    assert loss.item() < 0.1


def test_targets_minus_one_are_ignored():
    m = make(SMALL)
    idx, targets = random_ids((1, 8)), random_ids((1, 8), seed=2)
    masked = targets.clone()
    masked[:, 4:] = -1
    with torch.no_grad():
        _, half = m(idx, masked)
        logits, _ = m(idx)
    expected = torch.nn.functional.cross_entropy(logits[0, :4], targets[0, :4])
    torch.testing.assert_close(half, expected)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_head_loss_equals_the_logits_path_in_loss_and_every_gradient(dtype, monkeypatch):
    """return_logits=False (the chunked head loss training uses on a CPU) against F.cross_entropy
    over the full logits: the same loss and the same gradient for every parameter, ignored
    targets included, in float32 and under bfloat16 autocast. 70 positions: one chunk with a
    gradient; without one (evaluation), two full 32-row chunks and a partial one."""
    monkeypatch.setattr(head_loss_module, "HEAD_LOSS_ROWS", 32)
    m = make(SMALL, scale=0.05)  # eval mode: no dropout, gradients all the same
    x, y = random_ids((2, 35), seed=3), random_ids((2, 35), seed=4)
    y[0, :9] = -1
    results = []
    for return_logits in (True, False):
        m.zero_grad()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, loss = m(x, y, return_logits=return_logits)
        loss.backward()
        assert (logits is None) == (not return_logits)
        results.append((loss.item(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (loss_full, grads_full), (loss_chunked, grads_chunked) = results
    # (training's bfloat16 loss is read off bfloat16 probabilities, 3 significant digits each: 1e-4
    # of 10.9)
    assert loss_chunked == pytest.approx(loss_full, rel=1e-5 if dtype is None else 1e-4)
    for name, g in grads_full.items():  # bfloat16 rounds each path's products in its own order
        assert (grads_chunked[name] - g).norm() <= (1e-5 if dtype is None else 1e-2) * g.norm(), (
            name
        )
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        # no gradient wanted
        assert m(x, y, return_logits=False)[1].item() == pytest.approx(loss_full, rel=1e-5)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
def test_the_head_losss_softmax_is_torch_softmax_written_into_its_input(device):
    """slm.head_loss._softmax_ (the head loss's fused softmax, the kernel run in place on a CPU)
    against torch.softmax, on rows of small, huge and very negative logits: the same numbers, in
    the tensor given."""
    x = torch.randn(6, 50257, generator=torch.Generator().manual_seed(0)) * 3
    x[1] *= 100
    x[2, 123] = 1e4
    x[3] = -1e4
    x = x.to(device)
    want = torch.softmax(x, -1)
    got = x.clone()
    out = head_loss_module._softmax_(got)
    assert out.data_ptr() == got.data_ptr()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


def test_an_ignored_position_never_turns_the_head_loss_into_nan():
    """An ignored target (-1) is scored as token 0 and then dropped: where token 0's probability
    underflows to 0 there, log(0) * 0 would make the loss NaN. It must be the mean over the
    positions kept."""
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    # token 0: -200 at row 0
    w = torch.tensor([[-200.0, 0.0], [0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    targets = torch.tensor([-1, 2])
    loss = head_loss_module.head_loss(h, w, targets)
    loss.backward()
    expected = torch.nn.functional.cross_entropy(
        h.detach() @ w.detach().T, targets, ignore_index=-1
    )
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_kept_target_whose_probability_underflows_still_scores_its_exact_loss(dtype):
    """A kept target with log p below ~-87 has p = 0 in float32 after the softmax: log(0) would make
    the loss +inf (and training stop at a 'non-finite loss' that F.cross_entropy does not have).
    Such rows are scored from their logits again: the loss and gradients of F.cross_entropy,
    finite."""
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    # token 0: -200 at rows 0 and 2
    w = torch.tensor([[-200.0, 0.0], [0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    targets = torch.tensor([0, 2, 0])
    got, want = [], []
    for fn, out in (
        (head_loss_module.head_loss, got),
        (lambda a, b, t: torch.nn.functional.cross_entropy(a @ b.T, t), want),
    ):
        h.grad = w.grad = None
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = fn(h, w, targets)
        loss.backward()
        out += [loss.detach(), h.grad.clone(), w.grad.clone()]
    assert got[0].item() > 130 and torch.isfinite(got[0])
    for g, x in zip(got, want):  # bfloat16: the gradients rounded once each, in their own order
        torch.testing.assert_close(
            g, x, rtol=1e-6 if dtype is None else 1e-2, atol=0 if dtype is None else 1e-2
        )


def test_the_head_padded_to_a_multiple_of_64_rows_changes_no_number(monkeypatch):
    """In float32 the head loss multiplies GPT-2's 50,257 rows as 50,304 (zeros after the real ones,
    their logits -inf). Exact on every CPU: the padding's probabilities, and so its gradients,
    are 0 (exp(-inf)), the padding rows stay zeros and the gradient of w keeps its 50,257 rows.
    To a tolerance: the loss and the gradients equal the unpadded head's and float64's, since a
    GEMM's blocking, and so its rounding, follows the matrix's shape (bit for bit with AVX2's
    kernels, not with Intel AMX's). The tolerance, 1e-5 of each tensor's largest value, is 10x
    float32's rounding here, and the padding's logits left at 0 instead of -inf fail it. Under
    bfloat16 autocast the head is not padded."""
    monkeypatch.setattr(head_loss_module, "_KEPT", {})
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(50257, 16, generator=g) * 0.3).requires_grad_()
    h = torch.randn(24, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 50257, (24,), generator=g)
    t[:3] = -1
    results = []
    for pad in (1, 64):
        monkeypatch.setattr(head_loss_module, "HEAD_PAD", pad)
        h.grad = w.grad = None
        loss = head_loss_module.head_loss(h, w, t)
        loss.backward()
        results.append((loss.detach(), h.grad.clone(), w.grad.clone()))
        assert head_loss_module._KEPT["grad_logits"].numel() == 24 * (50304 if pad == 64 else 50257)
    assert not head_loss_module._KEPT["grad_logits"].view(24, 50304)[:, 50257:].any()
    assert (
        head_loss_module._KEPT["head"].shape == (50304, 16)
        and not head_loss_module._KEPT["head"][50257:].any()
    )
    assert results[1][2].shape == w.shape
    h64, w64 = (x.detach().double().requires_grad_() for x in (h, w))
    want = torch.nn.functional.cross_entropy(h64 @ w64.T, t, ignore_index=-1)
    want.backward()
    for unpadded, padded, exact in zip(*results, (want, h64.grad, w64.grad), strict=True):
        tolerance = {"rtol": 1e-5, "atol": 1e-5 * exact.abs().max().item()}
        torch.testing.assert_close(padded, unpadded, **tolerance)
        torch.testing.assert_close(padded.double(), exact.detach(), **tolerance)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head_loss_module.head_loss(h, w, t).backward()
    # a new buffer: bfloat16, unpadded
    assert head_loss_module._KEPT["grad_logits"].numel() == 24 * 50257


def test_training_steps_compute_the_head_in_one_kept_buffer_and_its_reuse_changes_no_number(
    monkeypatch,
):
    """The (N, V) logits-and-gradient tensor is the same memory from step to step (no fresh 200 MB
    to page in), grown for a larger step and replaced for another dtype, never two at once, and
    let go for an evaluation (whose chunks then take its memory, so the peak stays where it was).
    Two losses computed before one backward (gradient accumulation; each fills the buffer in
    turn) give the gradients of F.cross_entropy."""
    monkeypatch.setattr(head_loss_module, "_KEPT", {})
    w = (torch.randn(50, 16, generator=torch.Generator().manual_seed(0)) * 0.3).requires_grad_()
    hs = [
        torch.randn(n, 16, generator=torch.Generator().manual_seed(n), requires_grad=True)
        for n in (30, 30, 40)
    ]
    ts = [random_ids((n,), seed=n) % 50 for n in (30, 30, 40)]
    pointers = []
    for h, t in zip(hs, ts):
        head_loss_module.head_loss(h, w, t)
        pointers.append(head_loss_module._KEPT["grad_logits"].data_ptr())
    assert pointers[0] == pointers[1] != pointers[2]  # kept; then grown for 40 rows
    # the 50 tokens' head padded to 64 rows
    assert head_loss_module._KEPT["grad_logits"].numel() == 40 * 64
    # a smaller step takes the front of the larger buffer
    head_loss_module.head_loss(hs[0], w, ts[0])
    assert head_loss_module._KEPT["grad_logits"].data_ptr() == pointers[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head_loss_module.head_loss(hs[0], w, ts[0])
    assert {k: b.dtype for k, b in head_loss_module._KEPT.items()} == {
        "grad_logits": torch.bfloat16,
        # bf16: unpadded
        "head": torch.float32,
    }
    with torch.no_grad():
        # evaluation: no gradient; its chunks take the buffer's memory
        head_loss_module.head_loss(hs[2], w, ts[2])
    assert head_loss_module._KEPT == {}

    got, want = [], []
    for loss_fn, out in (
        (head_loss_module.head_loss, got),
        (lambda a, b, t: torch.nn.functional.cross_entropy(a @ b.T, t), want),
    ):
        for x in (*hs[:2], w):
            x.grad = None
        # two micro-batches, one backward
        (loss_fn(hs[0], w, ts[0]) + loss_fn(hs[1], w, ts[1])).backward()
        out += [hs[0].grad.clone(), hs[1].grad.clone(), w.grad.clone()]
    for g, x in zip(got, want):
        torch.testing.assert_close(g, x, rtol=1e-5, atol=1e-7)


def test_head_loss_skips_its_gradient_under_no_grad_and_chunks_only_where_a_chunk_costs_memory(
    monkeypatch,
):
    """Evaluation runs under torch.no_grad while the weights still require grad: the chunked head
    must not compute a gradient nobody asked for (the two (N, V) x (V, C) products), only its
    per-chunk logits. With a gradient the logits are computed in the gradient's own rows, float32
    or bfloat16, so all rows are one chunk (the head read once) and no (N, V) tensor is copied;
    evaluation's logits keep HEAD_LOSS_ROWS rows."""
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setattr(head_loss_module, "HEAD_LOSS_ROWS", 32)
    h = torch.randn(70, 16, requires_grad=True)  # three chunks of 32 rows
    w = torch.randn(50, 16, requires_grad=True)
    targets = random_ids((70,), seed=1) % 50

    def matmuls(grad: bool, dtype=torch.float32) -> tuple[float, int, int]:
        """The loss, the matmuls, and the copies of a whole (N, V) tensor."""
        with (
            torch.set_grad_enabled(grad),
            profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof,
            torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32),
        ):
            loss = head_loss_module.head_loss(h, w, targets)
        events = prof.key_averages(group_by_input_shape=True)
        return (
            loss.item(),
            sum(e.count for e in events if e.key == "aten::mm"),
            sum(
                e.count
                for e in events
                if e.key == "aten::copy_" and e.input_shapes[:1] == [[70, 50]]
            ),
        )

    (loss_grad, mm_grad, copies_grad), (loss_eval, mm_eval, _) = matmuls(True), matmuls(False)
    assert loss_eval == pytest.approx(loss_grad, rel=1e-6)
    assert (mm_grad, mm_eval, copies_grad) == (1 + 2, 3, 0)
    assert matmuls(True, torch.bfloat16)[1:] == (1 + 2, 0)


# ----------------------------------------------------------------------------- the used rows


def used_rows_model(seed: int = 0) -> tuple[GPT, torch.Tensor]:
    """SMALL, perturbed, ~1,200 token ids "used" and the rest all equal to one random shared row,
    and the head rows forward(rows=) takes: those ids, then the shared row's id."""
    m = make(SMALL, seed=seed, scale=0.05)
    used = torch.unique(random_ids((1200,), seed=seed + 10))  # (U,) sorted
    rows = head_loss_module.with_shared_row(used, 50257)
    m.share_unused_rows(rows)  # every unused row = the shared row's random values
    return m, rows


def used_ids_batch(rows: torch.Tensor, shape, seed: int) -> torch.Tensor:
    """Token ids drawn from the used rows only (not the shared one), as training's inputs and
    targets are."""
    return rows[random_ids(shape, seed=seed, vocab=rows.numel() - 1)]


def unused_mask(rows: torch.Tensor) -> torch.Tensor:
    unused = torch.ones(50257, dtype=torch.bool)
    unused[rows[:-1]] = False
    return unused


def full_loss_float64(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor):
    """The reference: F.cross_entropy over all 50,257 logits in float64: (loss, grad_h, grad_w)."""
    h64 = h.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    logits = (h64 @ w64.t()).view(-1, w.size(0))
    loss = F.cross_entropy(logits, y.reshape(-1), ignore_index=-1)
    loss.backward()
    return loss.item(), h64.grad.float(), w64.grad.float()


@pytest.mark.parametrize("fused", [False, True], ids=["plain-logits", "head-loss"])
def test_the_used_rows_loss_is_the_full_vocabulary_cross_entropy_with_its_gradients(fused):
    """The head over the used rows and the shared row against F.cross_entropy over all 50,257
    logits of the same weights, in float64, from the same hidden state (float32 on our side):
    the loss, and the gradients of the hidden state, of the used rows and of the shared row (the
    gradient of any one unused row), to 1e-5 of their scale, ignored targets included. Both
    paths: the plain logits over the rows (a GPU's) and slm.head_loss (a CPU's). The other unused
    rows get no gradient. (float32's own full head is further from float64 than this: it sums
    ~49,000 equal terms.)"""
    m, rows = used_rows_model()
    y = used_ids_batch(rows, (2, 35), seed=4)
    y[0, :9] = -1
    h = m.hidden_states(used_ids_batch(rows, (2, 35), seed=3)).detach().requires_grad_()
    w = m.lm_head.weight
    loss = m._used_rows_loss(h, y, rows, fused=fused)
    loss.backward()
    want_loss, want_h, want_w = full_loss_float64(h, w, y)
    assert loss.item() == pytest.approx(want_loss, abs=1e-5)
    shared, unused = rows[-1], unused_mask(rows)
    unused[shared] = False
    for got, want in ((h.grad, want_h), (w.grad[rows], want_w[rows])):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)
    assert not w.grad[unused].any()


@pytest.mark.parametrize("return_logits", [True, False], ids=["plain-logits", "head-loss"])
def test_the_used_rows_model_gradients_match_the_full_head_in_float64(return_logits):
    """Through the whole model (forward(rows=)): the loss to 1e-5 of float64's over the full
    logits, and every parameter's gradient to 1e-4 of its scale (the rest is float32's own error
    in the blocks, which the full head in float32 shares: it is checked alongside), the tied
    embedding's at the used rows and the shared row."""
    m, rows = used_rows_model(seed=1)
    x, y = used_ids_batch(rows, (2, 35), seed=5), used_ids_batch(rows, (2, 35), seed=6)
    ref = model_in_float64(m)
    h = ref.hidden_states(x)
    want = F.cross_entropy((h @ ref.lm_head.weight.t()).view(-1, 50257), y.view(-1))
    want.backward()
    grads = {n: p.grad.float() for n, p in ref.named_parameters()}
    for kw in ({"rows": rows, "return_logits": return_logits}, {}):
        m.zero_grad()
        _, loss = m(x, y, **kw)
        loss.backward()
        assert loss.item() == pytest.approx(want.item(), abs=1e-5), kw
        for name, p in m.named_parameters():
            got, want_grad = p.grad, grads[name]
            if name == "transformer.wte.weight" and kw:  # the other unused rows: no gradient
                got, want_grad = got[rows], want_grad[rows]
            scale = want_grad.abs().max().item()
            torch.testing.assert_close(got, want_grad, rtol=1e-4, atol=1e-4 * scale, msg=name)


def model_in_float64(m: GPT) -> GPT:
    ref = GPT(m.config).double().eval()
    ref.load_state_dict(m.state_dict())
    return ref


def test_the_used_rows_loss_under_bfloat16_autocast_is_the_full_loss_to_its_rounding():
    """Under bfloat16 autocast (a bf16 CPU's training), both paths, against F.cross_entropy over
    the full logits under the same autocast: the shared row's logit plus log(n) (~10.7) is a
    bfloat16 number, rounded by up to 1/32, so the unused rows' share of the softmax may be off
    by up to e^(1/32) - 1 (3.2%): the loss agrees to that share of it, and to 1e-4 (relative)
    where the unused rows have little probability, as in a trained model."""
    for seed, r_scale in ((0, 1.0), (1, 1.0), (2, 0.0)):
        m, rows = used_rows_model(seed=seed)
        x, y = used_ids_batch(rows, (2, 40), seed=5), used_ids_batch(rows, (2, 40), seed=6)
        with torch.no_grad():
            if not r_scale:  # the used rows' logits well above the unused rows' (trained)
                m.lm_head.weight[rows[-1]] = 0
                m.share_unused_rows(rows)
                m.lm_head.weight[rows[:-1]] *= 40
            logits = m(x)[0].float()
        share = logits.softmax(-1)[..., unused_mask(rows)].sum(-1).mean().item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full = m(x, y)[1].item()
            for return_logits in (True, False):
                used = m(x, y, rows=rows, return_logits=return_logits)[1].item()
                assert abs(used - full) <= 0.033 * share + 1e-4 * full, (seed, return_logits)
        assert share > 0.5 if r_scale else share < 1e-3


@pytest.mark.parametrize("return_logits", [True, False], ids=["plain-logits", "head-loss"])
def test_the_shared_row_moves_as_the_full_heads_unused_rows_do_under_adamw(return_logits):
    """From the same weights, the unused rows equal: AdamW steps (weight decay 0.1) with the used
    rows and the shared row against the full head. The full head keeps its unused rows exactly
    equal (equal rows get equal gradients and equal updates); after one step the shared row is
    them to 1e-6, and over 20 steps the losses agree to 1e-4 (Adam divides each gradient by its
    own size, so the order the two sides sum in shows in rows with tiny gradients). Clipping is
    off: it counts the shared row once where the full head counts its n rows. The other unused
    rows have no gradient, so AdamW only decays them, until share_unused_rows writes the shared
    row into them."""
    start, rows = used_rows_model(seed=2)
    start.train()
    unused = unused_mask(rows)
    keys = set(start.state_dict())
    runs = {}
    for side in ("full", "rows"):
        m = make(SMALL, seed=2)
        m.load_state_dict(start.state_dict())
        m.train()
        opt = torch.optim.AdamW(m.optim_groups(0.1), lr=1e-2, betas=(0.9, 0.99))
        losses = []
        for step in range(20):
            torch.manual_seed(step)  # the same dropout masks on both sides
            x = used_ids_batch(rows, (2, 16), seed=100 + step)
            y = used_ids_batch(rows, (2, 16), seed=200 + step)
            kw = {"rows": rows, "return_logits": return_logits} if side == "rows" else {}
            _, loss = m(x, y, **kw)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if step == 0:
                first = m.lm_head.weight.detach().clone()
        runs[side] = (losses, first, m)
    (full_losses, full_first, full), (row_losses, row_first, m) = runs["full"], runs["rows"]
    w = full.lm_head.weight.detach()
    assert torch.equal(w[unused], w[rows[-1]].expand(int(unused.sum()), -1))  # still equal
    assert (full_first[rows[-1]] - start.lm_head.weight[rows[-1]]).abs().gt(0).all()  # moved
    torch.testing.assert_close(row_first[rows[-1]], full_first[rows[-1]], rtol=0, atol=1e-6)
    assert row_losses == pytest.approx(full_losses, abs=1e-4)
    other = unused.clone()
    other[rows[-1]] = False
    decayed = start.lm_head.weight[other] * (1 - 1e-2 * 0.1) ** 20  # AdamW's decay, no update
    torch.testing.assert_close(m.lm_head.weight[other], decayed, rtol=1e-5, atol=0)
    m.share_unused_rows(rows)
    wm = m.lm_head.weight.detach()
    assert torch.equal(wm[unused], wm[rows[-1]].expand(int(unused.sum()), -1))
    assert set(m.state_dict()) == keys  # an ordinary GPT


def test_targets_in_rows_maps_ids_to_their_place_and_keeps_ignored_positions():
    rows = torch.tensor([3, 7, 50256, 0])
    targets = torch.tensor([[7, -1, 3], [50256, 3, -1]])
    assert head_loss_module.targets_in_rows(targets, rows, 50257).tolist() == [
        [1, -1, 0],
        [2, 0, -1],
    ]


def test_with_shared_row_appends_the_first_unused_id_or_none_when_all_are_used():
    share = head_loss_module.with_shared_row
    assert share(torch.tensor([0, 1, 2, 5, 9]), 10).tolist() == [0, 1, 2, 5, 9, 3]
    assert share(torch.tensor([1, 2]), 10).tolist() == [1, 2, 0]
    assert share(torch.tensor([0, 1, 2]), 4).tolist() == [0, 1, 2, 3]  # n = 1: itself
    assert share(torch.arange(10), 10) is None


def test_the_head_loss_with_a_shared_row_is_the_cross_entropy_with_that_row_n_times():
    """slm.head_loss's log_share: the last row stands for n equal rows. Against F.cross_entropy
    over the rows with the last one repeated n times, in float64: the loss, the hidden state's
    gradient and the rows' (the last row's the sum of its n copies'), in float32 and in the
    kept-buffer path's second call."""
    n = 5000
    h = torch.randn(30, 16, requires_grad=True)
    w = torch.randn(100, 16, requires_grad=True)
    t = random_ids((30,), seed=2, vocab=99)  # never the last row
    t[:3] = -1
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    full = torch.cat([w64[:-1], w64[-1:].expand(n, -1)])  # (99 + n, 16)
    loss = F.cross_entropy(h64 @ full.t(), t, ignore_index=-1)
    loss.backward()
    want = [loss.detach().float(), h64.grad.float(), w64.grad.float()]
    for _ in range(2):
        h.grad = w.grad = None
        loss = head_loss_module.head_loss(h, w, t, math.log(n))
        loss.backward()
        for g, x in zip([loss.detach(), h.grad, w.grad], want):
            torch.testing.assert_close(g, x, rtol=1e-5, atol=1e-5 * x.abs().max().item())


# ----------------------------------------------------------------------------- python model.py

REPO = Path(model.__file__).resolve().parent
# a top-level row of the parameter table: part, count, share
ROW = r"^(\S.*?)\s{2,}([\d,]+)\s+([\d.]+)%$"


def counted_by_hand(c: GPTConfig) -> int:
    """Parameters from the shapes alone (biases on): tied embedding, positions, blocks, final
    LayerNorm.
    """
    C = c.n_embd
    block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    return c.vocab_size * C + c.block_size * C + c.n_layer * block + 2 * C


def table(stdout: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2).replace(",", "")) for m in re.finditer(ROW, stdout, re.M)}


def test_python_model_py_describes_the_default_51m_model(tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "model.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout)
    # what GPT.num_params() gives (below)
    assert rows["total"] == 51_213_824 == counted_by_hand(GPTConfig())
    assert sum(n for part, n in rows.items() if part != "total") == rows["total"]  # each part once
    assert (
        rows["token embedding = LM head (tied, counted once)"] == 50257 * 512
        and rows["8 blocks"] > 0
    )
    assert "(0-7): 8 x Block(" in r.stdout and "lm_head" in r.stdout  # the architecture
    assert "FLOPs per token" in r.stdout and "MiB" in r.stdout
    loss = float(r.stdout.split("random tokens: loss ")[1].split()[0])
    assert abs(loss - math.log(50257)) < 0.5
    assert "every parameter (100 tensors, 51,213,824 values) got a finite gradient" in r.stdout
    assert list(tmp_path.iterdir()) == []  # writes nothing


def test_model_main_cpu_preset_and_flags(capsys):
    from config import PRESETS

    model.main(["--preset", "cpu"])
    out = capsys.readouterr().out
    cpu = PRESETS["cpu"].model
    assert table(out)["total"] == GPT(cpu).num_params() == counted_by_hand(cpu)
    assert f"{GPT(cpu).flops_per_token() / 1e6:,.1f} M" in out
    weights_mib = GPT(cpu).num_params() * 4 / 2**20
    assert f"weights {weights_mib:,.1f} MiB" in out and f"{4 * weights_mib:,.1f} MiB in all" in out

    model.main(["--preset", "cpu", "--n-layer", "6", "--no-bias", "--block-size", "16"])
    out = capsys.readouterr().out
    flagged = GPTConfig(**{**cpu.__dict__, "n_layer": 6, "bias": False, "block_size": 16})
    assert table(out)["total"] == GPT(flagged).num_params() and "6 blocks" in table(out)
    assert "on 2 x 16 random tokens" in out  # the check's sequence fits the context


@pytest.mark.parametrize(
    "bad, words",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--n-layer", "x"], "invalid int value"),
        (["--preset", "huge"], "invalid choice"),
        (["--dropout", "1"], "--dropout 1.0 must be in"),
        (["--n-head", "3"], "--n-embd 512 is not divisible by --n-head 3"),
    ],
)
def test_python_model_py_bad_flags_are_one_line_exit_2(bad, words, capsys):
    from slm.cli import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(model.main, bad)
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and words in err, err
    assert e.value.code == 2 and out == "", bad


def test_python_model_py_help_lists_every_model_flag(capsys):
    with pytest.raises(SystemExit) as e:
        model.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for flag in (
        "--preset",
        "--n-layer",
        "--n-embd",
        "--n-head",
        "--block-size",
        "--dropout",
        "--bias",
        "--vocab-size",
    ):
        assert flag in out
