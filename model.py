"""Step 4: the GPT. Token + position embeddings, pre-LayerNorm blocks, tied LM head, KV-cached
generation.

    python model.py                 # the default 51M model (the gpu preset's), described
    python model.py --preset cpu    # another preset from config.py; model flags as in training.py
    python model.py --n-layer 12 --n-embd 768 --n-head 12

Run as a script it creates the model and prints its architecture, a parameter table per part (the
tied token embedding / LM head counted once), FLOPs per token, the memory that weights and AdamW
state take, and one forward/backward pass on random tokens (loss near ln(vocab), a finite
gradient for every parameter). It reads and writes no files.

As a module it is pure: no files, no arguments, no prints (those live in main() only). The
attention path is SDPA (flash kernels; its math kernel where that measured faster: short training
windows on a CPU in bfloat16); set `CausalSelfAttention.use_sdpa = False` (class attribute, or on
one module) for the plain masked-softmax path the tests compare it against.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from config import GPTConfig
from slm.head_loss import head_loss, rows_of, targets_in_rows

__all__ = ["GPT", "GPTConfig"]

# On a CPU in bfloat16, SDPA's flash kernel has a slow backward for short windows: with gradients,
# windows up to this many tokens go to its math kernel (q @ k.T, softmax, @ v); at 256 tokens and
# more, and without gradients, flash is as fast or faster (benchmarks/machines.md, "The attention
# kernel on a CPU").
CPU_BF16_MATH_ATTENTION_MAX_T = 128


def attention_kernel(q: torch.Tensor):
    """The SDPA kernel for a causal window of queries q (B, nh, T, hs): the math kernel where it
    measured faster (a CPU, bfloat16, gradients on, T up to CPU_BF16_MATH_ATTENTION_MAX_T), else
    SDPA's own choice."""
    if (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and torch.is_grad_enabled()
        and q.size(2) <= CPU_BF16_MATH_ATTENTION_MAX_T
    ):
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


class CausalSelfAttention(nn.Module):
    use_sdpa = True  # False: explicit masked softmax (reference path for tests)

    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.block_size = config.block_size
        self.dropout = config.dropout
        # q, k, v at once
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:  # write this chunk's keys and values after the P already cached
            if "k" not in cache:  # buffers for the whole window, allocated once: no copy per step
                cache["k"] = k.new_empty(B, self.n_head, self.block_size, hs)  # (B, nh, block, hs)
                cache["v"] = v.new_empty(B, self.n_head, self.block_size, hs)  # (B, nh, block, hs)
                cache["n"] = 0
            P = cache["n"]
            cache["k"][:, :, P : P + T] = k
            cache["v"][:, :, P : P + T] = v
            cache["n"] = P + T
            k = cache["k"][:, :, : P + T]  # (B, nh, P+T, hs)
            v = cache["v"][:, :, : P + T]  # (B, nh, P+T, hs)
        S = k.size(2)  # keys visible: the cached prefix plus this chunk
        p = self.dropout if self.training else 0.0
        if self.use_sdpa:
            if S == T:  # no cache, or the prompt into an empty one
                with attention_kernel(q):
                    # (B, nh, T, hs)
                    y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            elif T == 1:  # one new token sees every cached key: no mask needed
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, nh, 1, hs)
            # a chunk after cached tokens: is_causal would align the mask to the top left, not here
            else:
                mask = self._causal_mask(T, S, x.device)
                # (B, nh, T, hs)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, S)
            att = att.masked_fill(~self._causal_mask(T, S, x.device), float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    @staticmethod
    def _causal_mask(T: int, S: int, device) -> torch.Tensor:
        """(T, S) bool, True where query i (at absolute position S-T+i) may attend to key j."""
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # exact (erf) form, as GPT-2's "gelu"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied: one matrix embeds and un-embeds
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """The one init: N(0, 0.02), zero biases, residual projections 1/sqrt(2 n_layer) of it."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if module in self._residual_projections():
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, device: str = "cpu") -> GPT:
        """Rebuild the GPT from the config a checkpoint dict stores (never today's defaults), strict
        load.
        """
        from slm.checkpoint import config_from_dict
        from slm.cli import CLIError, first_line

        model = cls(config_from_dict(ckpt["config"]))
        try:
            model.load_state_dict(ckpt["model"], strict=True)
        except RuntimeError as e:
            raise CLIError(
                f"checkpoint weights do not match its own config: {first_line(e)}"
            ) from None
        return model.to(device)

    def _residual_projections(self) -> list[nn.Module]:
        return [m for b in self.transformer.h for m in (b.attn.c_proj, b.mlp.c_proj)]

    # ------------------------------------------------------------------------- facts

    def num_params(self) -> int:
        """Parameters, the tied embedding / LM head matrix counted once."""
        return sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once

    def flops_per_token(self, head_rows: int | None = None) -> float:
        """Training FLOPs per token: 6N for the matmuls plus attention (PaLM appendix B; nanoGPT's
        MFU). head_rows: the rows of the head the training loss multiplies (the used rows and the
        shared one, slm/head_loss.py); None: all vocab_size of them.
        """
        c = self.config
        n = self.num_params() - self.transformer.wpe.weight.numel()
        if head_rows is not None:  # the head's skipped rows cost no FLOPs
            n -= (c.vocab_size - head_rows) * c.n_embd
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay matrices and embeddings (2+ dims), not biases or LayerNorm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    # ------------------------------------------------------------------------- forward

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[dict] | None = None, return_logits: bool = True,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:  # fmt: skip
        """idx (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy when targets are
        given (targets (B, T); -1 marks positions to ignore). caches: see hidden_states.

        return_logits=False (with targets): logits come back as None and the loss, the same
        number, is computed by slm.head_loss with its gradient, the logits turned into that
        gradient in place (no second (B*T, vocab) tensor): on a CPU a training step about twice
        as fast (see slm/head_loss.py).

        rows (U + 1,) token ids (with targets): the ids the training data uses, then one unused
        id whose row stands for every unused row (they are equal): only these rows are
        computed, and the loss is still the exact full-vocabulary one (_used_rows_loss). No
        logits come back; return_logits picks the path, as above."""
        h = self.hidden_states(idx, caches)  # (B, T, C)
        if targets is not None and rows is not None:
            return None, self._used_rows_loss(h, targets, rows, fused=not return_logits)
        if targets is not None and not return_logits:
            return None, head_loss(h.flatten(0, 1), self.lm_head.weight, targets.reshape(-1))
        logits = self.lm_head(h)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss

    def _used_rows_loss(
        self, h: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, fused: bool
    ) -> torch.Tensor:
        """The mean cross-entropy over the full vocabulary of h (B, T, C) against targets (B, T),
        computed from the head's rows `rows` alone (U + 1,): the ids the training data uses, then
        one unused id whose row r every unused row equals (share_unused_rows). Each of the n
        unused rows has logit h . r, so r's logit plus log(n) stands for all of them: the loss and
        the gradients are those of the full softmax of these weights, exact. r's gradient is one
        unused row's (its sum over the n rows divided by n), so AdamW moves r as it would move
        each of them. Every target must be in rows."""
        vocab, computed = self.config.vocab_size, rows.numel()
        share = vocab - computed + 1  # the unused rows r stands for
        w = rows_of(self.lm_head.weight, rows, share)  # (U + 1, C) its gradient goes to these rows
        local = targets_in_rows(targets, rows, vocab).reshape(-1)  # (B*T,) indices into rows
        if fused:
            return head_loss(h.flatten(0, 1), w, local, math.log(share))
        logits = F.linear(h, w).view(-1, computed).float()  # (B*T, U + 1)
        logits = torch.cat([logits[:, :-1], logits[:, -1:] + math.log(share)], 1)
        return F.cross_entropy(logits, local, ignore_index=-1)

    @torch.no_grad()
    def share_unused_rows(self, rows: torch.Tensor | None, zero: bool = False) -> None:
        """Set every row of the tied token embedding / LM head that rows (U + 1,) does not list as
        used (rows[:-1]) to the shared row rows[-1], or to zero (zero=True: how they start); with
        rows None (every row trained) nothing.

        Training with rows reads only the shared row of them (none is ever an input, and its
        logit stands for all), so the others are written from it when the weights are read as a
        whole: before an evaluation and before a save (training.py)."""
        if rows is None:
            return
        w = self.lm_head.weight
        unused = torch.ones(self.config.vocab_size, dtype=torch.bool, device=w.device)
        unused[rows[:-1].to(w.device)] = False
        w[unused] = 0 if zero else w[rows[-1]].clone()

    def hidden_states(self, idx: torch.Tensor, caches: list[dict] | None = None) -> torch.Tensor:
        """idx (B, T) -> the final LayerNorm's output (B, T, C); forward's logits are lm_head of
        this.

        caches: one dict per block for KV-cached generation, empty at first. Each block keeps its
        keys and values in it ("k", "v": (B, nh, block_size, hs) buffers, "n": positions filled),
        writes this chunk's after them, and this chunk's positions continue from there.
        """
        B, T = idx.shape
        start = caches[0].get("n", 0) if caches else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}"
            )
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        # (B, T, C)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, caches[i] if caches is not None else None)  # (B, T, C)
        return self.transformer.ln_f(x)  # (B, T, C)

    # ------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate_stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield each new token as it is sampled: a (B,) LongTensor (batch 1: `int(tok)` is the id).

        idx (B, T) is the prompt. temperature 0 is greedy; otherwise logits / temperature, then
        top_k (keep the k likeliest), then top_p (keep the smallest set of likeliest tokens whose
        probability reaches top_p), then one draw from `generator`. Call model.eval() first:
        dropout stays on in training mode.

        Stops after max_new_tokens, or once every row has produced eos_id. The eos_id is yielded;
        a row that finished before the others keeps receiving eos_id until the last one ends.

        Semantics are those of recomputing the whole context at each step (nanoGPT's generate):
        the logits of each step are model(context[:, -block_size:])[:, -1], so a prompt longer
        than block_size keeps its last block_size tokens. The prompt is processed once into a
        key/value cache and each following step feeds one token. Positions are learned and
        absolute, so once the context outgrows block_size every token's position shifts at each
        step and no cache can be reused: from then on each step recomputes the last block_size
        tokens (exact, and as fast as generation without a cache).
        """
        for nxt, _ in self.generate_stream_logits(
            idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator
        ):
            yield nxt

    @torch.no_grad()
    def generate_stream_logits(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """generate_stream, each token with the logits it was sampled from: ((B,) ids, (B, vocab)
        float32 logits). sampling_probs(logits, ...) is the distribution the token was drawn from.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        block = self.config.block_size
        ctx = idx[:, -block:]  # (B, T) a long prompt keeps its end
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # (B,)
        caches = None  # None: (re)compute from ctx; a list: ctx[:, :-1] is in the caches already
        for _ in range(max_new_tokens):
            if caches is not None:
                h = self.hidden_states(ctx[:, -1:], caches)  # (B, 1, C) one new token
            elif ctx.size(1) < block:  # the prompt, or nothing cached yet: fill the caches
                caches = [{} for _ in self.transformer.h]
                h = self.hidden_states(ctx, caches)  # (B, T, C)
            else:  # a full window: the next step shifts every position, so keep no cache
                h = self.hidden_states(ctx)  # (B, block, C)
            # (B, vocab) only the last position is needed
            logits = self.lm_head(h[:, -1, :]).float()
            nxt = self._sample(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_id is not None:
                # finished rows keep eos_id
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            yield nxt, logits
            if eos_id is not None and bool(done.all()):
                return
            ctx = torch.cat([ctx, nxt[:, None]], dim=1)  # (B, T+1)
            if ctx.size(1) > block:  # slide the window: positions shift, the caches are stale
                ctx = ctx[:, -block:]  # (B, block)
                caches = None

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> (B, T + new): the whole prompt followed by the sampled tokens, new <=
        max_new_tokens (fewer only when every row reached eos_id). Arguments as in
        generate_stream."""
        new = list(
            self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator)
        )
        # (B, T+new)
        return torch.cat([idx] + [t[:, None] for t in new], dim=1) if new else idx.clone()

    @staticmethod
    def _sample(
        logits: torch.Tensor,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """logits (B, vocab) -> (B,) ids. temperature 0 is greedy; top_k and top_p restrict the
        choice.
        """
        if temperature == 0:
            return logits.argmax(dim=-1)  # (B,)
        probs = GPT.sampling_probs(logits, temperature, top_k, top_p)  # (B, vocab)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)

    @staticmethod
    def sampling_probs(
        logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
    ) -> torch.Tensor:
        """logits (B, vocab) -> (B, vocab): the distribution _sample draws from, zero outside the
        top_k / top_p set. Greedy (temperature 0) draws nothing and takes the argmax: its
        distribution here is the model's own softmax, whose likeliest token is the one taken.
        """
        if temperature == 0:
            return F.softmax(logits, dim=-1)  # (B, vocab)
        logits = logits / temperature  # (B, vocab)
        if top_k is not None and top_k < logits.size(-1):
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
            logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, vocab)
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)  # (B, vocab) each
            probs = F.softmax(sorted_logits, dim=-1)  # (B, vocab)
            before = probs.cumsum(dim=-1) - probs  # (B, vocab) mass of the likelier tokens
            # the first always stays
            sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
            # (B, vocab)
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        return F.softmax(logits, dim=-1)  # (B, vocab)


# ----------------------------------------------------------------------------- python model.py


def main(argv: list[str] | None = None) -> None:
    from dataclasses import replace

    from config import PRESETS
    from slm.cli import ArgumentParser
    from slm.describe import describe
    from slm.settings import add_model_flags, check_model_config, flags_given

    p = ArgumentParser(
        prog="python model.py",
        description="Step 4: create the GPT of a preset and describe it: architecture, parameters "
        "per part (the tied embedding / LM head once), FLOPs per token, memory for fp32 "
        "weights and AdamW state, and one forward/backward pass on random tokens. Reads and "
        "writes no files.",
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="gpu",
        help="model shape from config.py (default: gpu, the 51M default GPTConfig). "
        + "; ".join(f"{name}: {pr.description}" for name, pr in PRESETS.items()),
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the initialisation and the random tokens"
    )
    add_model_flags(p)
    args = p.parse_args(argv)
    given = flags_given(args, GPTConfig)
    config = replace(PRESETS[args.preset].model, **given)
    check_model_config(config)
    torch.manual_seed(args.seed)
    if not describe(GPT(config), args.preset, given, args.seed):
        sys.exit(1)


if __name__ == "__main__":
    from slm.cli import run_cli

    run_cli(main)
