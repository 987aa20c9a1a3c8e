#!/usr/bin/env python3
"""bench_torch.py: the PyTorch side of the kernel benchmark, on the same shapes
as tools/bench-msa, so that our numbers are compared with what a framework
user would get:

  - torch.topk(k=16) on the block scores [B*Hkv, N/Bk] (fp32) against our
    top-k kernel (which also places the local block and sorts);
  - F.scaled_dot_product_attention (bf16, GQA through enable_gqa, causal
    aligned to the end of the context for prefill) against our dense
    kernel and against the whole MSA step.

Reads bench-msa's --json output for our times and prints one table (and
--json for the docs). Times are GPU times (calls captured in a CUDA graph,
event-timed replays, median), as in bench-msa; small inputs rotate over
several copies so that they are not served from L2.

  python3 tools/bench_torch.py --ours bench.json [--json torch.json]
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def time_us(fn, reps=20, warm=3, n_inputs=1, launches=5):
    """GPU time of one call, as bench-msa measures it: `reps` calls (rotating
    inputs) captured in a CUDA graph, events around replays, median / reps."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(warm):
            fn(i % n_inputs)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fn(i % n_inputs)
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(launches):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1000.0 / reps)
    del g
    return statistics.median(ts)


def n_copies(bytes_one, l2=50 << 20):
    return max(1, min(8, (4 * l2) // max(1, bytes_one) + 1))


def sdpa_backend_name(q, k, v, **kw):
    """Which backend SDPA can use here: flash first, then cuDNN, then
    memory-efficient, then math."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
               SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel([be]):
                F.scaled_dot_product_attention(q, k, v, **kw)
            return be
        except RuntimeError:
            continue
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--json")
    args = ap.parse_args()
    ours = json.load(open(args.ours))
    from torch.nn.attention import sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows_out = []
    for r in ours["results"]:
        Hq, Hkv, d, B, rows, N = r["Hq"], r["Hkv"], r["d"], r["B"], r["rows"], r["N"]
        Bk, k = r["Bk"], r["top_k"]
        nb = N // Bk
        # top-k on block scores
        sc_bytes = B * rows * Hkv * nb * 4
        nc = n_copies(sc_bytes)
        scores = [torch.randn(B * rows * Hkv, nb, device=dev) for _ in range(nc)]
        t_topk = time_us(lambda i: torch.topk(scores[i], k, dim=-1), n_inputs=nc)
        del scores
        # dense SDPA
        kv_bytes = 2 * B * Hkv * N * d * 2
        nc = n_copies(kv_bytes)
        t_sdpa, be = float("nan"), None
        try:
            q = torch.randn(B, Hq, rows, d, device=dev, dtype=torch.bfloat16)
            ks = [torch.randn(B, Hkv, N, d, device=dev, dtype=torch.bfloat16) for _ in range(nc)]
            vs = [torch.randn(B, Hkv, N, d, device=dev, dtype=torch.bfloat16) for _ in range(nc)]
            kw = dict(enable_gqa=True)
            if rows > 1:
                kw["attn_mask"] = causal_lower_right(rows, N)
            be = sdpa_backend_name(q, ks[0], vs[0], **kw)
            if be is not None:
                with sdpa_kernel([be]):
                    t_sdpa = time_us(lambda i: F.scaled_dot_product_attention(q, ks[i], vs[i], **kw),
                                     reps=2 if N >= 524288 or rows > 1 else 20, n_inputs=nc)
            del q, ks, vs
        except torch.OutOfMemoryError:
            be = "out of memory"
        torch.cuda.empty_cache()
        row = dict(Hq=Hq, Hkv=Hkv, d=d, B=B, rows=rows, N=N,
                   torch_topk_us=t_topk, ours_topk_us=r["topk_us"],
                   sdpa_us=t_sdpa, sdpa_backend=str(be), ours_dense_us=r["dense_us"],
                   ours_step_us=r["step_us"])
        rows_out.append(row)
        print(f"{Hq}/{Hkv}/{d} B={B} rows={rows} N={N}: torch.topk {t_topk:.1f} us (ours {r['topk_us']:.1f}, "
              f"{t_topk / r['topk_us']:.1f}x)  SDPA {t_sdpa:.1f} us [{be}] (ours dense {r['dense_us']:.1f}, "
              f"MSA step {r['step_us']:.1f}: {t_sdpa / r['step_us']:.1f}x faster than SDPA)", flush=True)

    print(f"\ntorch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| shape | mode | B x rows | N | torch.topk us | our top-k us | speed-up | SDPA us (backend) | our dense us | our MSA step us | SDPA / MSA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows_out:
        mode = "prefill" if x["rows"] > 1 else "decode"
        be = x["sdpa_backend"].replace("SDPBackend.", "")
        print(f"| {x['Hq']}/{x['Hkv']}/{x['d']} | {mode} | {x['B']}x{x['rows']} | {x['N'] // 1024}K | "
              f"{x['torch_topk_us']:.1f} | {x['ours_topk_us']:.1f} | {x['torch_topk_us'] / x['ours_topk_us']:.1f}x | "
              f"{x['sdpa_us']:.1f} ({be}) | {x['ours_dense_us']:.1f} | {x['ours_step_us']:.1f} | "
              f"{x['sdpa_us'] / x['ours_step_us']:.1f}x |")
    if args.json:
        json.dump(dict(torch=torch.__version__, device=torch.cuda.get_device_name(), results=rows_out),
                  open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
