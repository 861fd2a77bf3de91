"""The LM head's loss on a CPU: the mean cross-entropy of softmax(h @ w.T) and its gradient,
computed together, the logits turned into their own gradient in place (no second (positions,
vocab) tensor). GPT.forward(..., return_logits=False) uses it; training does on a CPU
(training.keep_logits), where it is faster than the plain logits path (benchmarks/training.md,
"bfloat16 and the chunked head loss").
"""

from __future__ import annotations

import torch

# Positions per head-loss chunk where there is no gradient to compute the logits in (evaluation), so
# a chunk's logits (and a bfloat16 chunk's float32 copy) are memory of their own: 512 bounds them at
# 512 x 50,257 float32 (103 MB) however large the batch, and fewer chunks re-read the (V, C) head
# fewer times (benchmarks/machines.md).
HEAD_LOSS_ROWS = 512
# In float32 the head's rows are multiplied as a matrix of a multiple of HEAD_PAD rows, zeros after
# the 50,257 real ones, whose logits are set to -inf before the softmax: the loss and the gradients
# are those over the real tokens, bit for bit (tested), and the products run faster with rows a
# multiple of 64; bfloat16 gained little and stays unpadded (benchmarks/training.md, "The head
# padded to 50,304 rows"). The model, its checkpoints, generation and the export keep the 50,257
# rows.
HEAD_PAD = 64
# The tensors a training step reuses, kept for the next step: the (positions, vocab) one it computes
# its logits and their gradient in (gradient_buffer), and the padded head (padded_head).
_KEPT: dict[str, torch.Tensor] = {}


class _HeadLoss(torch.autograd.Function):
    """Mean cross-entropy of softmax(h @ w.T) against targets, with its gradient computed on the
    way.

    The LM head's logits are (N, 50257): at width 128 the head is ~90% of the model's FLOPs, and
    on a CPU the plain path spends more time than that moving its float32 logits (cast,
    log-softmax, its backward, zero-filled gradients) than multiplying. Here the rows are
    multiplied straight into the gradient buffer, turned into their softmax in place by one fused
    kernel (in the buffer's dtype: bfloat16 under autocast, whose kernel sums in float32), scored
    at their targets, and made softmax - one_hot; the gradients of h and w then come from two
    large matmuls, divided by n. Without a gradient (evaluation) the logits go in chunks, a
    bfloat16 chunk's softmax on a float32 copy. The numbers are those of F.cross_entropy(h @ w.T,
    targets, ignore_index=-1) (the tests compare them).
    """

    @staticmethod
    def forward(
        ctx,
        h: torch.Tensor,
        w: torch.Tensor,
        targets: torch.Tensor,
        grad_enabled: bool,
        log_share: float | None,
    ) -> torch.Tensor:
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        v, hl = w.size(0), h.to(dtype)  # (N, C) the matmul input, as autocast would cast it
        # (Vp, C): in float32 the head, then zero rows to a multiple of HEAD_PAD; else the head
        # cast (Vp = V)
        wp = padded_head(w, dtype) if dtype == torch.float32 else w.to(dtype)
        wl = wp[:v]  # (V, C) the head itself, cast as autocast would
        keep = targets != -1  # (N,)
        n = keep.sum().clamp(min=1).float()  # positions scored
        want_grad = grad_enabled and any(ctx.needs_input_grad[:2])  # not under no_grad (evaluation)
        if not want_grad and not torch.compiler.is_compiling():
            # evaluation's chunks take the training buffer's memory: the peak stays where it was
            _KEPT.clear()
        # (N, V): each chunk's logits, then its gradient
        grad_logits = gradient_buffer(h.size(0), wp.size(0), dtype, h.device) if want_grad else None
        # Without a gradient (evaluation) a bfloat16 / float16 chunk's softmax runs on a float32
        # copy, for an exact loss; with one, in place in the gradient buffer, in bfloat16 (the
        # kernel sums in float32).
        to_float = dtype != torch.float32 and not want_grad
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        # With a gradient, the chunk is all rows, computed in the (N, V) gradient, which exists
        # anyway: one chunk reads the head once. Otherwise (evaluation's logits, or their float32
        # copy) chunks bound the memory.
        per_chunk = max(h.size(0), 1) if want_grad else HEAD_LOSS_ROWS
        for s in range(0, h.size(0), per_chunk):
            rows = slice(s, s + per_chunk)
            # (R, Vp) logits
            e = torch.mm(hl[rows], wp.t(), out=grad_logits[rows] if want_grad else None)
            e[:, v:] = -torch.inf  # the padding's logits: probability exactly 0, and so gradient 0
            if to_float:
                e = e.float()
            if log_share is not None:  # the last row stands for n rows: e^logit counted n times
                e[:, v - 1] += log_share
            k = keep[rows, None]  # (R, 1)
            t = targets[rows, None].clamp(min=0)  # (R, 1)
            # e: (R, V) probabilities; log_p: (R, 1)
            log_p = _softmax_at_targets_(e, t, k, hl[rows], wl, log_share)
            total -= torch.where(k, log_p, 0).sum()  # -log softmax at the target (0 if ignored)
            if want_grad:
                # softmax - one_hot, by indexing: scatter_ and scatter_add_ copy a whole bfloat16
                # tensor twice
                e[torch.arange(e.size(0), device=e.device), t[:, 0]] -= 1
                if not k.all():
                    e.masked_fill_(~k, 0)  # ignored positions give no gradient
        if want_grad:
            grad_h, grad_w = gradients(grad_logits, wp, hl, v, n, h.dtype, w.dtype)
            ctx.save_for_backward(grad_h, grad_w)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors  # (N, C), (V, C)
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None


def gradients(grad_logits, wp, hl, v: int, n, h_dtype, w_dtype):
    """(grad_h (N, C), grad_w (V, C)) of the mean loss from the (N, Vp) softmax - one_hot."""
    grad_h = torch.mm(grad_logits, wp)  # (N, C)
    if grad_logits.dtype == torch.float32:
        grad_w = torch.mm(grad_logits.t(), hl)[:v]  # (V, C): the padding's rows (zeros) left out
    else:
        # bfloat16 (oneDNN) is faster as (C, N) @ (N, V), with the (C, N) operand laid out in its
        # own rows: hl.t() copied (0.5 MB at 16 x 128), not a transposed view
        grad_w = torch.mm(hl.t().contiguous(), grad_logits).t()[:v]
    # Divided by n here, in (N, C) and (V, C) and in float32 (h's and w's dtype under autocast),
    # not over (N, V): a pass saved. (One copy: the cast writes grad_w in w's row-major layout,
    # whatever the product left.)
    grad_h = grad_h.to(torch.float32).div_(n).to(h_dtype)
    grad_w = grad_w.to(torch.float32, memory_format=torch.contiguous_format).div_(n).to(w_dtype)
    return grad_h, grad_w


def padded_head(w: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w (V, C) in the first V rows of a (Vp, C) matrix of dtype, Vp the first multiple of
    HEAD_PAD; the other rows are zeros. On a CPU the same matrix every step, w copied into it."""
    v, c = w.shape
    vp = -(-v // HEAD_PAD) * HEAD_PAD
    reuse = w.device.type == "cpu" and not torch.compiler.is_compiling()
    kept = _KEPT.get("head") if reuse else None
    if kept is None or kept.shape != (vp, c) or kept.dtype != dtype:
        kept = torch.zeros(vp, c, dtype=dtype, device=w.device)
        if reuse:
            _KEPT["head"] = kept
    kept[:v].copy_(w)
    return kept


def gradient_buffer(n: int, v: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An (n, v) tensor for a training step's logits and their gradient: on a CPU the same memory
    every step.

    It is 206 MB at 16 x 128 positions in bfloat16 (412 MB in float32). Where the allocator hands
    a freed block that big back to the operating system (glibc does, unless
    slm.hardware.keep_freed_memory raised its thresholds, which it cannot on macOS, Windows or
    musl), a fresh one is mapped page by page as it is first written, each page zeroed: ~50,000
    page faults, a step measurably slower (benchmarks/machines.md). One buffer is kept, the
    largest a step has asked for, until an evaluation;
    its contents never outlive the forward pass that fills them (the gradients are computed
    there)."""
    # (CUDA caches its own blocks; compile plans its own)
    if device.type != "cpu" or torch.compiler.is_compiling():
        return torch.empty(n, v, dtype=dtype, device=device)
    kept = _KEPT.get("grad_logits")
    if kept is None or kept.dtype != dtype or kept.numel() < n * v:
        _KEPT.pop("grad_logits", None)  # the old buffer goes before the new one comes: never two
        kept = _KEPT["grad_logits"] = torch.empty(n * v, dtype=dtype, device=device)
    return kept[: n * v].view(n, v)


def _softmax_at_targets_(
    e: torch.Tensor,
    t: torch.Tensor,
    k: torch.Tensor,
    h: torch.Tensor,
    w: torch.Tensor,
    log_share: float | None = None,
) -> torch.Tensor:
    """The logits e (R, V) -> their softmax, in e; returns log softmax (R, 1) at the targets t (R,
    1), float32.

    log p is read off the softmax (in float32: a bfloat16 probability is rounded to 3 significant
    digits, its log to 0.002 of the 2-4 it is), where a kept (k) target's probability underflowed
    (log p below ~-87: 0 or subnormal), its row's logits h @ w.T are computed again and
    log_softmax'd, so the loss stays finite and exact where F.cross_entropy's is (a rare row,
    cheap). torch.compile cannot build that data-dependent repair; there log p comes from a
    float32 logsumexp of e before the softmax, a pass it fuses."""
    if torch.compiler.is_compiling():
        log_p = e.gather(1, t).float() - torch.logsumexp(e.float(), -1, keepdim=True)
        _softmax_(e)
        return log_p
    _softmax_(e)
    p_t = e.gather(1, t).float()
    log_p = p_t.log()
    lost = k & (p_t < torch.finfo(torch.float32).tiny)
    if lost.any():
        i = lost.nonzero()[:, 0]
        z = torch.mm(h[i], w.t()).float()  # (L, V)
        if log_share is not None:  # the last row's logit counted n times, as in e
            z[:, -1] += log_share
        log_p[i] = torch.log_softmax(z, -1).gather(1, t[i])
    return log_p


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """x (R, V) -> softmax over its rows, in x. On a CPU one fused kernel does it in place (max,
    exp, sum and scale row by row, each element read and written in order): one pass over x where
    amax, sub, exp, sum and div made five. torch.softmax has no in-place form, so this is the
    kernel torch.softmax calls, given x as its output; elsewhere torch.softmax's result is copied
    back."""
    # (torch.compile fuses its own)
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        return torch._softmax(x, -1, False, out=x)
    return x.copy_(torch.softmax(x, -1))


def head_loss(
    h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, log_share: float | None = None
) -> torch.Tensor:
    """h (N, C) final hidden states, w (V, C) the LM head, targets (N,) with -1 ignored -> mean
    cross-entropy.

    log_share: log(n), where w's last row stands for n equal rows that are left out of w (the
    unused rows, model.GPT.forward's rows): its logit is counted n times in every softmax, by
    adding log(n) to it. The loss is then that of the full head; the last row's gradient is the
    sum of the n rows' (rows_of divides it by n). Under bfloat16 autocast the sum is rounded as
    a bfloat16 logit near log(n) is: by up to 3% of those rows' share of the softmax.
    """
    # Inside forward grad mode is always off, so whether the caller wants a gradient is passed in:
    # under torch.no_grad the parameters still require grad, and the gradient would be computed for
    # nothing.
    return _HeadLoss.apply(h, w, targets, torch.is_grad_enabled(), log_share)


class _RowsOf(torch.autograd.Function):
    """w (V, C), rows (U,) distinct ids -> w[rows] (U, C); the gradient is copied back into those
    rows of a zero (V, C) one, the last row's divided by share (the rows it stands for).
    (index_select's own backward adds with scatter_add, which allows repeated ids and is several
    times slower on a CPU.)"""

    @staticmethod
    def forward(ctx, w: torch.Tensor, rows: torch.Tensor, share: int) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.vocab, ctx.share = w.size(0), share
        return w.index_select(0, rows)  # (U, C)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.vocab, grad.size(1))  # (V, C)
        out.index_copy_(0, rows, grad)
        if ctx.share != 1:
            out[rows[-1]] /= ctx.share
        return out, None, None


def targets_in_rows(targets: torch.Tensor, rows: torch.Tensor, vocab: int) -> torch.Tensor:
    """targets (any shape; -1 ignored) -> the index of each target in rows (U,) distinct token
    ids, -1 kept; a target not in rows becomes -1 too, so the caller must pass rows that hold
    every target."""
    where = torch.full((vocab,), -1, dtype=torch.long, device=rows.device)
    where[rows] = torch.arange(rows.numel(), device=rows.device)  # (vocab,) token id -> index
    return torch.where(targets >= 0, where[targets.clamp(min=0)], -1)


def rows_of(w: torch.Tensor, rows: torch.Tensor, share: int = 1) -> torch.Tensor:
    """w[rows] for distinct rows, its gradient copied back into those rows, the last row's divided
    by share (_RowsOf)."""
    return _RowsOf.apply(w, rows, share)


def with_shared_row(used: torch.Tensor, vocab: int) -> torch.Tensor | None:
    """used (U,) sorted distinct token ids -> (U + 1,): them, then the smallest id not among them,
    whose row stands for every unused row (model.GPT.forward's rows); None when every id is used."""
    if used.numel() >= vocab:
        return None
    # ids equal their index up to the first gap: the first unused id is how many do
    first_unused = int((used == torch.arange(used.numel(), device=used.device)).sum())
    return torch.cat([used, used.new_tensor([first_unused])])
