"""Fused LM-head losses against full logits: time and peak memory of one soft-KL + hard-CE step.

For each vocabulary (with a typical student width: SmolLM's 49152 × 576, Qwen2.5-0.5B's 151936 × 896,
Gemma 3 270M's 262144 × 640) and ``--rows`` token rows, two workloads run forward + backward of
``T²·KL(softmax(t/T) ‖ softmax(z/T)) + CE(z, y)`` (means over the rows) from the student's hidden rows
and head weight (both with gradients) and the teacher's rows and head weight (no gradient; the
teacher has the student's width here):

* ``naive``: full logits ``rows @ Wᵀ`` for the student (with graph) and the teacher, ``log_softmax``
  of both, ``F.kl_div`` + ``F.cross_entropy``, backward;
* ``fused``: :func:`lightning_kd.losses.fused_linear.fused_linear_terms` with a ``SoftSpec`` (KL) and a
  ``HardSpec`` (CE), backward (default chunk size).

Each (workload, vocabulary) runs alone in a fresh subprocess, so its peak is its own: the peak
resident set (``ru_maxrss``) after the repeats minus the resident set once the inputs exist, i.e.
what the step itself adds (logits, softmaxes, gradients of rows and weight). Time: median of
``--repeats`` steps (the first one included). Both compute the same loss from the same seeded inputs;
the table shows their relative difference. The machine may be shared: timings are noisy.

    python benchmarks/fused_head.py                 # 256 rows, 1 thread: a few minutes on a 2-core CPU
    python benchmarks/fused_head.py --rows 2048 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = [(49152, 576), (151936, 896), (262144, 640)]  # (V, d)
TEMPERATURE = 2.0


def _rss_bytes() -> int:
    """The current resident set of this process."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(workload: str, vocab: int, width: int, rows: int, repeats: int, threads: int) -> dict:
    """One workload, timed in this (fresh) process."""
    import torch
    import torch.nn.functional as F

    from lightning_kd.losses.fused_linear import HardSpec, LinearHead, SoftSpec, fused_linear_terms

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=g).requires_grad_()
    weight = (torch.randn(vocab, width, generator=g) / width**0.5).requires_grad_()
    teacher_x = torch.randn(rows, width, generator=g)
    teacher_weight = torch.randn(vocab, width, generator=g) / width**0.5
    labels = torch.randint(0, vocab, (rows,), generator=g)
    student, teacher = LinearHead(weight), LinearHead(teacher_weight)
    soft = SoftSpec.masked_mean(torch.ones(rows), "kl", TEMPERATURE)
    hard = HardSpec.mean(labels)

    def naive() -> float:
        z = x @ weight.T
        with torch.no_grad():
            t = teacher_x @ teacher_weight.T
        log_q = F.log_softmax(z / TEMPERATURE, dim=-1)
        log_p = F.log_softmax(t / TEMPERATURE, dim=-1)
        loss = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * TEMPERATURE**2 + F.cross_entropy(z, labels)
        loss.backward()
        return loss.item()

    def fused() -> float:
        terms = fused_linear_terms(x, student, teacher_x, teacher, soft=soft, hard=hard, hard_ratio=1.0)
        loss = terms["soft"] + terms["hard"]
        loss.backward()
        return loss.item()

    step = naive if workload == "naive" else fused
    before = _rss_bytes()
    seconds, value = [], 0.0
    for _ in range(repeats):
        x.grad = weight.grad = None
        start = time.perf_counter()
        value = step()
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"seconds": statistics.median(seconds), "peak_delta": peak - before, "loss": value}


def run(workload: str, vocab: int, width: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", workload, "--vocab", str(vocab), "--width", str(width),
               "--rows", str(args.rows), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{workload} V={vocab} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="token rows R (default 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per workload (default 1)")
    parser.add_argument("--vocabs", type=int, nargs="*", help="only these vocabularies of the table")
    parser.add_argument("--child", choices=["naive", "fused"], help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.vocab, args.width, args.rows, args.repeats, args.threads)))
        return

    mib = 2**20
    print(f"R = {args.rows} rows, T = {TEMPERATURE}, soft KL + hard CE, forward + backward, "
          f"{args.threads} thread(s), median of {args.repeats}; peak RSS delta per fresh process\n")
    print("| V | d | naive s | fused s | fused/naive time | naive ΔRSS MiB | fused ΔRSS MiB | naive/fused memory | "
          "R·V·4 MiB | loss rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for vocab, width in CONFIGS:
        if args.vocabs and vocab not in args.vocabs:
            continue
        naive, fused = run("naive", vocab, width, args), run("fused", vocab, width, args)
        diff = abs(fused["loss"] - naive["loss"]) / abs(naive["loss"])
        print(f"| {vocab} | {width} | {naive['seconds']:.2f} | {fused['seconds']:.2f} | "
              f"{fused['seconds'] / naive['seconds']:.2f} | {naive['peak_delta'] / mib:.0f} | "
              f"{fused['peak_delta'] / mib:.0f} | {naive['peak_delta'] / max(fused['peak_delta'], 1):.1f} | "
              f"{args.rows * vocab * 4 / mib:.0f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
