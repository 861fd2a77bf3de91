"""What `python model.py` prints about a GPT: its layers, parameters per part (the tied token
embedding / LM head once), FLOPs per token, the memory of its weights and AdamW state, and one
forward and backward pass on random tokens. It takes the model; it imports no step script."""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
import torch.nn as nn

# the forward/backward check: 2 sequences of up to 32 random tokens
CHECK_BATCH, CHECK_TOKENS = 2, 32
BYTES_FP32 = 4
MIB = 2**20


def parameter_table(model) -> list[tuple[str, int]]:
    """(part, parameters) rows: every parameter in exactly one top-level row (the tied matrix once),
    then indented rows splitting one block; the top-level rows sum to model.num_params()."""
    c, t = model.config, model.transformer

    def count(*modules: nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    block = t.h[0]
    rows = [
        ("token embedding = LM head (tied, counted once)", count(t.wte)),
        ("position embedding", count(t.wpe)),
        (f"{c.n_layer} blocks", count(t.h)),
        ("  one block", count(block)),
        ("    attention (qkv + output projection)", count(block.attn)),
        ("    MLP (4x expansion + projection)", count(block.mlp)),
        ("    2 LayerNorms", count(block.ln_1, block.ln_2)),
        ("final LayerNorm", count(t.ln_f)),
    ]
    return rows + [("total", sum(n for part, n in rows if not part.startswith(" ")))]


def forward_backward_check(model, seed: int) -> tuple[float, list[str]]:
    """One training step's forward and backward on random tokens: (loss, names of parameters whose
    gradient is missing or not finite)."""
    g = torch.Generator().manual_seed(seed)
    T = min(CHECK_TOKENS, model.config.block_size)
    idx = torch.randint(model.config.vocab_size, (CHECK_BATCH, T), generator=g)  # (B, T)
    targets = torch.randint(model.config.vocab_size, (CHECK_BATCH, T), generator=g)  # (B, T)
    model.train()
    model.zero_grad(set_to_none=True)
    _, loss = model(idx, targets)
    loss.backward()
    bad = [
        name
        for name, p in model.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    return loss.item(), bad


def describe(model, preset: str, given: dict, seed: int) -> bool:
    """Print the description; False when a parameter got no finite gradient."""
    config = model.config
    n = model.num_params()
    changed = (
        f" with {', '.join(f'{k}={v}' for k, v in given.items())} from the flags" if given else ""
    )
    print(f"preset {preset}{changed}: " + ", ".join(f"{k}={v}" for k, v in asdict(config).items()))
    print(model)

    rows = parameter_table(model)
    width = max(len(part) for part, _ in rows)
    print(f"\n{'part':<{width}}  {'parameters':>12}  {'share':>6}")
    for part, count in rows:
        share = f"{100 * count / n:5.1f}%" if not part.startswith(" ") else ""
        print(f"{part:<{width}}  {count:>12,}  {share:>6}".rstrip())
    if rows[-1][1] != n:  # the table must account for every parameter exactly once
        raise RuntimeError(f"parameter table total {rows[-1][1]:,} != GPT.num_params() {n:,}")
    print("(total = GPT.num_params(): the shared matrix is one tensor)")

    flops = model.flops_per_token()
    print(
        "\nFLOPs per token, training (forward + backward, 6N + attention at context "
        f"{config.block_size}): {flops / 1e6:,.1f} M; forward only about {flops / 3e6:,.1f} M"
    )
    weights = n * BYTES_FP32
    print(
        f"memory, fp32: weights {weights / MIB:,.1f} MiB, gradients {weights / MIB:,.1f} MiB, "
        f"AdamW moments (2 per parameter) {2 * weights / MIB:,.1f} MiB: {4 * weights / MIB:,.1f} "
        "MiB in all for training, before activations (which grow with batch x context)"
    )

    loss, bad = forward_backward_check(model, seed)
    T = min(CHECK_TOKENS, config.block_size)
    print(
        f"\nforward/backward on {CHECK_BATCH} x {T} random tokens: loss {loss:.4f} (ln "
        f"{config.vocab_size} = {math.log(config.vocab_size):.4f} for an untrained model)"
    )
    if bad or not math.isfinite(loss):
        print(
            f"check FAILED: {len(bad)} parameters without a finite gradient (e.g. {bad[:3]}), "
            f"loss {loss}"
        )
        return False
    print(
        f"every parameter ({sum(1 for _ in model.parameters())} tensors, {n:,} values) got a "
        "finite gradient"
    )
    return True
