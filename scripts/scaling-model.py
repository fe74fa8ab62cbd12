#!/usr/bin/env python3
"""Paper model of a Bard run over many hosts (docs/scaling.md): per-step time of the synchronous data-parallel step
for a single coordinator, K sharded coordinators, a ring reduce-scatter/all-gather among hosts, and 16-bit transfer.

Inputs are measured on one 2-core host (scripts/bench-cluster.sh, bard bench) and can be overridden:
  python3 scripts/scaling-model.py [--chars-per-s-per-host 9800] [--params 4336705] [--link-gbit 10] ...
"""
import argparse


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--params", type=int, default=4_336_705, help="parameters (default recipe: 2x512 LSTM, V=65)")
    p.add_argument("--flops-per-char", type=float, default=3 * 2 * (512 * 2048 * 2 + 512 * 2048 * 2 + 512 * 65))
    p.add_argument("--host-gflops", type=float, default=120.0, help="sustained model GFLOP/s of one 2-core host")
    p.add_argument("--columns-per-host", type=int, default=32)
    p.add_argument("--bptt", type=int, default=50)
    p.add_argument("--link-gbit", type=float, default=10.0)
    p.add_argument("--latency-ms", type=float, default=0.05, help="per message, one way")
    p.add_argument("--update-ns-per-param", type=float, default=1.5, help="Adam + clip + reduction on one core")
    p.add_argument("--sharded-link-p", type=float, nargs=3, default=[1.01, 1.52, 1.80], metavar=("N2", "N4", "N8"),
                   help="bytes per step on the busiest host link with one coordinator shard per host, in units of P, each "
                        "way, measured by scripts/bench-hosts.sh at 2, 4 and 8 hosts (docs/scaling.md); the design's "
                        "2 (N-1)/N, which they follow, carries it to more hosts")
    p.add_argument("--sharded-link-factor", type=float, default=1.31,
                   help="a sharded step's time beyond compute, per busiest-link time in one direction, measured on the "
                        "emulated hosts (1.31 at 4 hosts, 1.15 at 8): a worker's slices come in before its compute and its "
                        "gradients go out after, overlapping only in part with its shard's serving")
    p.add_argument("--sharded-overhead-ms", type=float, default=10.4,
                   help="per-step overhead of the sharded step beyond compute and transfer (the lead's plan, the shards' "
                        "sums, norm parts and acknowledgements): the median step of 4 shards and 4 workers over loopback "
                        "with a model too small to compute or transfer, on 2 cores shared by 9 processes (the star "
                        "coordinator's: 6.4 ms; docs/scaling.md)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    a = p.parse_args()

    link = a.link_gbit * 1e9 / 8  # bytes/s, full duplex
    chars = a.columns_per_host * a.bptt
    compute = chars * a.flops_per_char / (a.host_gflops * 1e9)
    print(f"model: {a.params:,} parameters ({a.params * 4 / 1e6:.1f} MB fp32); per host {chars} chars/step, "
          f"compute {compute * 1e3:.0f} ms/step; links {a.link_gbit:g} Gbit/s")
    print()
    header = f"{'hosts':>5} | {'single coord':>13} | {'8 coord shards':>14} | {'ring allreduce':>14} | {'ring + fp16':>11} | {'chars/s ring+fp16':>17}"
    print(header)
    print("-" * len(header))
    for n in [1, 2, 4, 8, 16, 32, 64]:
        b = a.params * 4
        update = a.params * a.update_ns_per_param * 1e-9
        # Single coordinator: its one link carries N parameter copies out and N gradients in (full duplex:
        # the two directions overlap), plus the reduction of N gradients and the update on one core.
        single = compute + n * b / link + 2 * a.latency_ms * 1e-3 + update + (n - 1) * a.params * 0.3e-9
        # K coordinator processes on K hosts, each owning 1/K of the parameters (sharded reduction + update).
        k = min(8, n)
        sharded = compute + n * (b / k) / link + 2 * a.latency_ms * 1e-3 + update / k
        # Ring reduce-scatter + all-gather among the hosts (no coordinator on the data path): each host sends and
        # receives 2 (N-1)/N of the buffer; each host updates its 1/N slice (the optimiser state is sharded too).
        ring = compute + (2 * (n - 1) / n * b / link if n > 1 else 0) + 2 * (n - 1) * a.latency_ms * 1e-3 + update / n
        ring16 = compute + (2 * (n - 1) / n * (b / 2) / link if n > 1 else 0) + 2 * (n - 1) * a.latency_ms * 1e-3 + update / n
        print(f"{n:>5} | {single * 1e3:>10.0f} ms | {sharded * 1e3:>11.0f} ms | {ring * 1e3:>11.0f} ms | {ring16 * 1e3:>8.0f} ms | "
              f"{n * chars / ring16:>17,.0f}")
    print()
    # The design built (issue 11): one shard per host, slices cut on 32 K-parameter blocks, so at most
    # params / 32768 shards; the lead's link carries every host's tokens and carried state (h and c) each step.
    blocks = -(-a.params // 32768)
    state = 2 * 4 * a.layers * a.hidden * a.columns_per_host + 4 * (a.bptt + 1) * a.columns_per_host
    measured = dict(zip([2, 4, 8], a.sharded_link_p))
    worst = max(v / (2 * (n - 1) / n) for n, v in measured.items())
    print(f"sharded coordinators as built: one shard per host (at most {blocks} shards: {blocks} blocks of 32 K); busiest "
          f"host link measured {', '.join(f'{v:g} P at {n}' for n, v in measured.items())} hosts each way, up to "
          f"{worst:.2f}x the design's 2 (N-1)/N P; link time x {a.sharded_link_factor:g} (in, then out); lead link "
          f"{state / 1e3:.0f} kB of tokens and state per host; {a.sharded_overhead_ms:g} ms of overhead per step (measured over loopback)")
    print(f"{'hosts':>5} | {'shards':>6} | {'step':>8} | {'efficiency':>10} | {'chars/s':>10} | limit")
    for n in [16, 64, 256]:
        k = min(n, blocks)
        b = a.params * 4
        # A shard host's link: its worker takes (K-1)/K P from the other shards, and its shard serves the other
        # N-1 workers 1/K P each (measured: the design's figure times `worst`).
        host_link = worst * ((k - 1) / k + (n - 1) / k) * b / link * a.sharded_link_factor
        lead_link = n * state / link
        step = compute + max(host_link, lead_link) + 2 * a.latency_ms * 1e-3 + a.update_ns_per_param * 1e-9 * a.params / k \
            + a.sharded_overhead_ms * 1e-3
        limit = "the lead's link (tokens and state)" if lead_link > host_link else "the shard hosts' links"
        print(f"{n:>5} | {k:>6} | {step * 1e3:>5.0f} ms | {compute / step:>9.0%} | {n * chars / step:>10,.0f} | {limit}")
    print()
    crossover = compute * link / (a.params * 4)
    print(f"the single coordinator's link time equals one host's compute at N = {crossover:.1f} hosts: "
          f"beyond that the coordinator is the bottleneck")


if __name__ == "__main__":
    main()
