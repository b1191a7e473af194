"""Speed and memory of MusicTransformer against Hugging Face GPT-2 of the same shape (CPU, fp32).

    python benchmarks/bench_model.py            # the full issue-3 protocol (~15 min on 2 cores)
    python benchmarks/bench_model.py --quick    # reduced sizes, a few minutes

Measures generation tokens/s with the KV cache and top-p sampling through musegen's own sampler
(batch 1 and 8; GPT-2 through ``generate()``), training
tokens/s (forward + backward + AdamW), and a scaling table (time and peak memory per token,
forward + backward, batch 1) for relative/local/sparse. Prints the ratios and which targets
from issue 3 are met. ``transformers`` is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import time

import torch
import torch.nn.functional as F

from musegen.config import preset
from musegen.generation.sampling import Stopping, build_processors, sample
from musegen.model.transformer import MusicTransformer
from musegen.training.optim import keep_freed_memory

V = 512


def ours(kind: str, **kw) -> MusicTransformer:
    torch.manual_seed(0)
    return MusicTransformer(preset("small", vocab_size=V, attention=kind, dropout=0.0, **kw))


def gpt2(max_len: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=V,
        n_positions=max_len,
        n_embd=256,
        n_layer=6,
        n_head=8,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg)


def gen_ours(model, batch: int, prompt: int, new: int) -> float:
    """New tokens per second (all rows) through musegen's own sampler (top-p 0.9, one seed per
    row), prefill included in the clock like generate()."""
    model.eval()
    prompts = torch.randint(0, V, (batch, prompt)).tolist()
    t0 = time.perf_counter()
    out = sample(model, prompts, build_processors(top_p=0.9), Stopping(new), seeds=range(batch))
    elapsed = time.perf_counter() - t0
    assert all(len(row) == new for row in out)
    return batch * new / elapsed


@torch.no_grad()
def gen_gpt2(model, batch: int, prompt: int, new: int) -> float:
    model.eval()
    ids = torch.randint(0, V, (batch, prompt))
    t0 = time.perf_counter()
    model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        top_p=0.9,
        top_k=0,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=0,
    )
    return batch * new / (time.perf_counter() - t0)


def train_tps(model, L: int, batch: int, steps: int, hf: bool = False) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, V, (batch, L + 1))

    def step():
        logits = model(ids[:, :-1]).logits if hf else model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * L * steps / (time.perf_counter() - t0)


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (VmRSS now, VmHWM the peak).

    ``getrusage``'s ``ru_maxrss`` is no use in a spawned child: Linux carries the parent's
    high-water mark across ``fork``/``exec``, so every row would report the parent's size.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _scaling_child(kind: str, L: int, threads: int, measure: str, queue) -> None:
    """One forward + backward at length ``L`` in a fresh process.

    ``measure="time"``: the trainer's allocator setting (optim.keep_freed_memory), one
    full-length step to warm up, then the timed step (steady state, as in training).
    ``measure="memory"``: every block of 64 KiB or more gets its own mapping, so the peak RSS
    follows the live tensors; with pooled heaps it also counts blocks the allocator holds
    between the step's temporaries, which grows with ``L`` (fragmentation, not the model).
    """
    libc = ctypes.CDLL(None)
    if measure == "time":
        keep_freed_memory()
    else:
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    torch.set_num_threads(threads)
    extra = dict(max_seq_len=L, max_relative_distance=max(L, 1024) if kind == "relative" else 1024)
    model = ours(kind, **extra).train()
    ids = torch.randint(0, V, (1, L))

    def step() -> None:
        model(ids).float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)

    model(ids[:, :64]).sum().backward()  # warm-up, allocator settled
    model.zero_grad(set_to_none=True)
    if measure == "memory":
        libc.malloc_trim(0)
        base = _status_kb("VmRSS")
        _reset_peak()
        step()
        queue.put((_status_kb("VmHWM") - base) / L)
        return
    step()
    t0 = time.perf_counter()
    step()
    queue.put((time.perf_counter() - t0) / L * 1e3)


def scaling_row(kind: str, L: int, threads: int) -> tuple[float, float]:
    """(ms per token, peak KiB per token), each from its own fresh process."""
    ctx = mp.get_context("spawn")
    out = []
    for measure in ("time", "memory"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_scaling_child, args=(kind, L, threads, measure, queue))
        proc.start()
        out.append(queue.get())
        proc.join()
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced sizes (a few minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=None, help="new tokens (512; quick: 96)")
    ap.add_argument("--train-len", type=int, default=None, help="L for training (1024; quick: 512)")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=None, help="timed steps (3; quick: 1)")
    ap.add_argument(
        "--scaling", default=None, help="comma list of L (1024..16384; quick: 1024,4096)"
    )
    ap.add_argument("--skip", default="", help="comma list of sections to skip: gen,train,scaling")
    a = ap.parse_args()
    new = a.new or (96 if a.quick else 512)
    train_len = a.train_len or (512 if a.quick else 1024)
    steps = a.train_steps or (1 if a.quick else 3)
    lens = [
        int(x)
        for x in (a.scaling or ("1024,4096" if a.quick else "1024,2048,4096,8192,16384")).split(",")
    ]
    skip = set(a.skip.split(","))
    torch.set_num_threads(a.threads)
    keep_freed_memory()  # as the trainer does on CPU
    print(f"threads={a.threads} fp32; indicative numbers (shared machine)")
    met = []
    if "gen" not in skip:
        ref = gpt2(a.prompt + new + 1)
        for batch, target in ((1, 2.0), (8, 3.0)):
            g = gen_gpt2(ref, batch, a.prompt, new)
            for kind in ("relative", "local"):
                r = gen_ours(ours(kind), batch, a.prompt, new)
                print(
                    f"generate b={batch} {kind:9s} {r:8.1f} tok/s  gpt2 {g:8.1f}  ratio {r / g:5.2f}"
                )
                if kind == "relative":
                    met.append((f"relative gen b={batch} >= {target}x", r / g >= target, r / g))
    if "train" not in skip:
        g = train_tps(gpt2(train_len), train_len, a.train_batch, steps, hf=True)
        for kind, target in (
            ("relative", 0.6),
            ("local", 0.9),
            ("sparse", None),
            ("absolute", None),
        ):
            r = train_tps(ours(kind), train_len, a.train_batch, steps)
            print(
                f"train L={train_len} b={a.train_batch} {kind:9s} {r:8.1f} tok/s  gpt2 {g:8.1f}  ratio {r / g:5.2f}"
            )
            if target:
                met.append((f"{kind} train >= {target}x", r / g >= target, r / g))
    if "scaling" not in skip:
        print("scaling, batch 1, fwd+bwd:  kind      L   ms/token  KiB/token")
        table = {}
        for kind in ("relative", "local", "sparse"):
            for L in lens:
                ms, kib = scaling_row(kind, L, a.threads)
                table[kind, L] = (ms, kib)
                print(f"                          {kind:9s} {L:6d} {ms:9.3f} {kib:9.1f}")
        lo, hi = min(lens), max(lens)
        t_ratio = table["local", hi][0] / table["local", lo][0]
        m_ratio = table["local", hi][1] / max(table["local", lo][1], 1e-9)
        met.append((f"local time/token {hi} vs {lo} <= 1.3x", t_ratio <= 1.3, t_ratio))
        met.append((f"local mem/token {hi} vs {lo} <= 1.3x", m_ratio <= 1.3, m_ratio))
    print("targets:")
    for name, ok, value in met:
        print(f"  [{'met' if ok else 'MISSED'}] {name} (measured {value:.2f})")


if __name__ == "__main__":
    main()
