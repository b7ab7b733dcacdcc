"""Peak memory and time of per-token log-probs + full-vocabulary KL: chunked vs naive.

    python benchmarks/logprob_memory.py                       # CUDA if available, else CPU
    python benchmarks/logprob_memory.py --tokens 16384 --vocab 151936 --dtype bfloat16   # the GPU setting

Each variant runs in a fresh subprocess (``--variant``), so its peak is its own: on CUDA the peak of
``torch.cuda.max_memory_allocated`` above the inputs, on the CPU the growth of the process's
maximum resident set size above the inputs. Both variants compute the policy's log-prob of the
sampled token, its entropy, the reference's log-prob and the exact KL, forward and backward, from
the last hidden states and the output matrix (what :func:`kltutor.capstone.logprobs.chunked_token_stats`
takes). Values are compared to the naive float32 log-softmax-then-gather. Prints a table and the
ratios side by side; asserts nothing (benchmarks/README.md records the figures).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _inputs(args, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    dt = getattr(torch, args.dtype)
    hidden = (torch.randn(1, args.tokens, args.hidden, generator=g) * 0.5).to(device, dt).requires_grad_()
    ref_hidden = (torch.randn(1, args.tokens, args.hidden, generator=g) * 0.5).to(device, dt)
    head = (torch.randn(args.vocab, args.hidden, generator=g) / args.hidden**0.5).to(device, dt).requires_grad_()
    ref_head = (torch.randn(args.vocab, args.hidden, generator=g) / args.hidden**0.5).to(device, dt)
    targets = torch.randint(0, args.vocab, (1, args.tokens), generator=g).to(device)
    return hidden, head, targets, ref_hidden, ref_head


def _run_variant(args) -> dict:
    from kltutor.capstone.logprobs import chunked_token_stats, naive_token_stats

    device = torch.device(args.device)
    hidden, head, targets, ref_hidden, ref_head = _inputs(args, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if args.variant == "chunked":
        st = chunked_token_stats(hidden, head, targets, ref_hidden, ref_head, chunk=args.chunk)
    else:
        st = naive_token_stats(hidden @ head.T, targets, ref_hidden @ ref_head.T)
    loss = st["logp"].sum() + st["kl"].sum()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    seconds = time.perf_counter() - t0
    return {
        "variant": args.variant,
        "peak_extra_MiB": peak / 2**20,
        "seconds": seconds,
        "logp_sum": float(st["logp"].double().sum()),
        "kl_sum": float(st["kl"].double().sum()),
        "grad_norm": float(hidden.grad.double().norm()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per batch (default 16384 on CUDA, 2048 on CPU)")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--dtype", default=None, help="bfloat16 on CUDA, float32 on CPU by default")
    ap.add_argument("--variant", choices=["chunked", "naive"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.tokens = args.tokens or (16384 if args.device == "cuda" else 2048)
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.variant:
        print(json.dumps(_run_variant(args)))
        return
    rows = []
    for variant in ("naive", "chunked"):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--device",
            args.device,
            "--tokens",
            str(args.tokens),
            "--vocab",
            str(args.vocab),
            "--hidden",
            str(args.hidden),
            "--chunk",
            str(args.chunk),
            "--dtype",
            args.dtype,
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    naive, chunked = rows
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"device: {dev}; tokens {args.tokens}, vocab {args.vocab}, hidden {args.hidden}, dtype {args.dtype}, chunk {args.chunk}"
    )
    print(f"{'variant':<10}{'peak extra MiB':>16}{'seconds':>10}{'sum logp':>16}{'sum KL':>14}")
    for r in rows:
        print(
            f"{r['variant']:<10}{r['peak_extra_MiB']:>16.1f}{r['seconds']:>10.3f}{r['logp_sum']:>16.3f}{r['kl_sum']:>14.4f}"
        )
    print(f"memory ratio chunked/naive: {chunked['peak_extra_MiB'] / naive['peak_extra_MiB']:.3f} (target <= 0.25)")
    print(f"time ratio chunked/naive:   {chunked['seconds'] / naive['seconds']:.2f}")
    rel = abs(chunked["logp_sum"] - naive["logp_sum"]) / abs(naive["logp_sum"])
    print(
        f"relative difference of sum logp: {rel:.2e}; of sum KL: {abs(chunked['kl_sum'] - naive['kl_sum']) / abs(naive['kl_sum']):.2e}"
    )


if __name__ == "__main__":
    main()
