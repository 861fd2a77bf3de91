"""Before/after of the chunked head loss in float32: the old path (each chunk's logits computed into a
fresh tensor, then copied into the (N, vocab) gradient buffer) against model.head_loss today (the chunk's
matmul writes straight into the buffer's rows, mm out=), at the cpu preset's shape (N = 16 x 128 = 2,048
positions, width 128, vocab 50,257), for chunk sizes 32, 128 and 256. Best of ROUNDS, interleaved.

    .venv/bin/python benchmarks/bench_head_inplace.py 5
"""
import sys, time, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
import model as M
import slm.head_loss as H
torch.manual_seed(0)
N, V, C = 2048, 50257, 128
h = torch.randn(N, C, requires_grad=True); w = (torch.randn(V, C) * 0.02).requires_grad_(); t = torch.randint(0, V, (N,))
def old(h, w, t, R):
    hl, wl = h.detach(), w.detach(); keep = t != -1; n = keep.sum().clamp(min=1).float()
    g = torch.empty(N, V); total = torch.zeros(())
    for s in range(0, N, R):
        rows = slice(s, s + R); e = torch.mm(hl[rows], wl.t()).float(); m = e.amax(1, keepdim=True); e.sub_(m).exp_()
        z = e.sum(1, keepdim=True); k = keep[rows, None].float(); tt = t[rows, None]
        total += ((z.log() - e.gather(1, tt).log()) * k).sum(); e.mul_(k / (n * z)); e.scatter_add_(1, tt, -k / n); g[rows] = e
    return torch.mm(g, wl), torch.mm(g.t(), hl)
def new(h, w, t, R):
    H.HEAD_LOSS_ROWS = R
    loss = M.head_loss(h, w, t); loss.backward(); return None
res = {}
for r in range(int(sys.argv[1])):
    for name, f in (("copy", old), ("inplace", new)):
        for R in (32, 128, 256):
            t0 = time.perf_counter(); f(h, w, t, R); dt = time.perf_counter() - t0
            res[(name, R)] = min(res.get((name, R), 9), dt)
for k, v in sorted(res.items()): print(k, f"{v*1000:.0f} ms")
