"""Where a distillation step's time goes, against the floor's: matrix products and the rest, op by op.

Profiles one step of each workload of ``benchmarks/step_time.py`` (after two warm-up steps, with the CPU
allocator ``lightning-kd`` uses) with ``torch.profiler`` and prints, per workload, the seconds in matrix
products (``mm``, ``addmm``, ``bmm``, …) and in everything else, then the largest other ops. A method whose
matrix products match the floor's but whose step is slower loses its time in elementwise passes over the
logits (softmaxes, divergences) that the floor does not run.

    python -m benchmarks.step_profile --stage pretrain --workloads DistilBERT "teacher forward" "student step"
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

#: Ops whose time is a matrix product (dense BLAS or attention kernels).
MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


def profile_step(step, top: int) -> tuple[float, float, list[tuple[str, float, int]]]:
    """``(matrix-product seconds, other seconds, [(op, seconds, calls)] of the largest other ops)`` of one ``step()``."""
    for _ in range(2):  # warm-up: lazy initialisation and the allocator's first growth
        step()
    with profile(activities=[ProfilerActivity.CPU]) as recorded:
        step()
    events = recorded.key_averages()
    products = sum(e.self_cpu_time_total for e in events if e.key in MATRIX_PRODUCTS) / 1e6
    others = sorted(((e.key, e.self_cpu_time_total / 1e6, e.count) for e in events if e.key not in MATRIX_PRODUCTS),
                    key=lambda item: -item[1])
    return products, sum(seconds for _, seconds, _ in others), others[:top]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["finetune", "pretrain"], default="pretrain")
    parser.add_argument("--workloads", nargs="+", required=True, help="step_time.py workload names, e.g. DistilBERT 'student step'")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--top", type=int, default=8, help="other ops listed per workload")
    args = parser.parse_args(argv)

    from benchmarks.step_time import build_step, cpu_model
    from lightning_kd.cpu_allocator import keep_freed_memory

    keep_freed_memory()
    options = argparse.Namespace(stage=args.stage, batch_size=args.batch_size, seq_len=args.seq_len, precision="fp32", device="cpu")
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.stage} stage, batch "
          f"{args.batch_size} × {args.seq_len}, fp32; one profiled step after two warm-up steps (self CPU seconds)\n")
    print("| workload | matrix products (s) | other ops (s) | largest other ops (s, calls) |")
    print("|---|---|---|---|")
    for workload in args.workloads:
        products, others, top = profile_step(build_step(workload, options), args.top)
        listed = ", ".join(f"{name.removeprefix('aten::')} {seconds:.2f} ({calls})" for name, seconds, calls in top)
        print(f"| {workload} | {products:.2f} | {others:.2f} | {listed} |", flush=True)


if __name__ == "__main__":
    main()
