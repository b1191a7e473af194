"""Where a decode step's time goes, and what each of musegen's decode measures buys (CPU, fp32).

    python benchmarks/bench_decode.py                 # all sections, a few minutes
    python benchmarks/bench_decode.py --skip alloc    # without the long-sequence training step

Sections (the reference of each ratio is measured in the same run):

* ``products``: the six-layer benchmark model's weight products for one decode step, through
  ``F.linear`` and through the split copies of :mod:`musegen.model.linear`, for 1 and 8 rows.
* ``draw``: one sampling draw for 8 rows, per-row ``torch.multinomial`` against
  :func:`musegen.generation.sampling.draw`.
* ``step``: a batch-8 decode step (256-token prompt, 512 new tokens): the prefill, the mean
  step, and the attention alone over the real cache at 512 keys (musegen's three matmuls, and
  ``scaled_dot_product_attention``) against a plain ``sum`` over the same key/value tensors
  (the rate at which this machine can read them).
* ``alloc``: one ``local`` forward + backward at ``--alloc-len`` tokens, first and second step,
  with glibc's default allocator and with :func:`musegen.training.optim.keep_freed_memory` (user, system
  and wall seconds), each in a fresh process.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_model import V, ours  # the same six-layer model as the speed comparison

from musegen.generation.sampling import draw
from musegen.model.linear import Linear
from musegen.training.optim import keep_freed_memory


def median_ms(fn: Callable[[], object], reps: int = 200) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[reps // 2] * 1e3


@torch.inference_mode()
def products(model) -> None:
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for rows in (1, 8):
        xs = {n: torch.randn(rows, n) for n in (256, 1024)}

        def plain(xs: dict = xs) -> None:
            for m in layers:
                F.linear(xs[m.in_features], m.weight, m.bias)

        def split(xs: dict = xs) -> None:
            for m in layers:
                m(xs[m.in_features])

        p, s = median_ms(plain), median_ms(split)
        print(f"products, {rows} row(s): F.linear {p:.3f} ms, split {s:.3f} ms ({p / s:.2f}x)")


def draws() -> None:
    probs = torch.randn(8, V).softmax(-1)
    gens = [torch.Generator().manual_seed(i) for i in range(8)]

    def per_row() -> None:
        for i in range(8):
            int(torch.multinomial(probs[i], 1, generator=gens[i]))

    m, d = median_ms(per_row) * 1e3, median_ms(lambda: draw(probs, gens)) * 1e3
    print(f"draw, 8 rows: per-row multinomial {m:.0f} us, draw {d:.0f} us ({m / d:.1f}x)")


@torch.inference_mode()
def step(model) -> None:
    B, N = 8, 512
    ids = torch.randint(0, V, (B, 256))
    cache = model.new_cache(B)
    t0 = time.perf_counter()
    model(ids, cache=cache)
    prefill = time.perf_counter() - t0
    tok = torch.zeros(B, 1, dtype=torch.long)
    t0 = time.perf_counter()
    for _ in range(512):
        model(tok, cache=cache)
    mean = (time.perf_counter() - t0) / 512 * 1e3
    per_token = prefill / 512 * 1e3
    print(f"step, batch 8: prefill {prefill * 1e3:.0f} ms ({per_token:.2f} ms per new token)")
    print(f"  mean decode step {mean:.2f} ms")
    H, D = model.config.n_heads, model.config.head_dim
    q = torch.randn(B * H, 1, D)
    kv = [
        (k[:, :, :N].reshape(B * H, N, D), v[:, :, :N].reshape(B * H, N, D))
        for k, v in zip(cache.k, cache.v, strict=True)
    ]

    def attention() -> None:
        for k, v in kv:
            torch.bmm(torch.bmm(q, k.transpose(1, 2)).softmax(-1), v)

    def sdpa() -> None:
        for k, v in kv:
            F.scaled_dot_product_attention(
                q.view(B, H, 1, D), k.view(B, H, N, D), v.view(B, H, N, D)
            )

    def read() -> None:
        for k, v in kv:
            k.sum()
            v.sum()

    mb = sum(k.numel() + v.numel() for k, v in kv) * 4 / 2**20
    a, r, f = median_ms(attention, 50), median_ms(read, 50), median_ms(sdpa, 50)
    print(f"  attention over {N} keys, 6 layers: {a:.2f} ms ({mb / 1024 / a * 1e3:.0f} GB/s)")
    print(f"  the same through scaled_dot_product_attention: {f:.2f} ms")
    print(f"  plain read of the same {mb:.0f} MB: {r:.2f} ms ({mb / 1024 / r * 1e3:.0f} GB/s)")


def _alloc_child(keep: bool, L: int, queue) -> None:
    if keep:
        keep_freed_memory()
    torch.set_num_threads(2)
    model = ours("local", max_seq_len=L).train()
    ids = torch.randint(0, V, (1, L))
    out = []
    for _ in range(2):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        model(ids).float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.append((r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, time.perf_counter() - t0))
    queue.put(out)


def alloc(L: int) -> None:
    ctx = mp.get_context("spawn")
    for keep in (False, True):
        queue = ctx.Queue()
        proc = ctx.Process(target=_alloc_child, args=(keep, L, queue))
        proc.start()
        steps = queue.get()
        proc.join()
        name = "keep_freed_memory" if keep else "default allocator"
        for i, (user, sys_s, wall) in enumerate(steps, 1):
            print(
                f"alloc, local L={L}, {name}, step {i}: user {user:.1f} s, system {sys_s:.1f} s, "
                f"wall {wall:.1f} s ({wall / L * 1e3:.3f} ms/token)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alloc-len", type=int, default=16384)
    ap.add_argument("--skip", default="", help="comma list of sections: products,draw,step,alloc")
    a = ap.parse_args()
    skip = set(a.skip.split(","))
    torch.set_num_threads(a.threads)
    print(f"threads={a.threads} fp32; indicative numbers (shared machine)")
    model = ours("relative").eval()  # built outside inference mode, as a loaded checkpoint is
    if "products" not in skip:
        products(model)
    if "draw" not in skip:
        draws()
    if "step" not in skip:
        step(model)
    if "alloc" not in skip:
        alloc(a.alloc_len)


if __name__ == "__main__":
    main()
