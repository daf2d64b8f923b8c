#!/usr/bin/env python3
"""PyTorch's exact k-NN on the GPU: the baseline `vecwal-bench gpu` runs beside its own.

The same work as the store's GPU search, as a PyTorch user writes it: the
queries come from host memory, distances are |q|^2 + |x|^2 - 2 q.x in FP32
(no TF32), torch.topk keeps the k smallest, and the answers go back to host
memory. Prints one line per batch size: "nq <nq> queries_per_s <v> median of <reps>".

usage: torch_knn.py ROWS DIM K SECONDS NQ [NQ ...]
"""
import sys
import time

import torch


def main():
    rows, dim, k, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    batches = [int(a) for a in sys.argv[5:]]
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda", 0)
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.rand(rows, dim, device=dev, generator=g) * 2 - 1
    xn = (x * x).sum(dim=1)
    # The largest product that fits a quarter of the card's free memory: a
    # user who asks for a million rows against a thousand queries tiles them.
    free, _ = torch.cuda.mem_get_info(dev)
    for nq in batches:
        q_host = (torch.rand(nq, dim) * 2 - 1).pin_memory()
        tile = max(1, min(rows, int(free // 4 // (4 * nq))))

        def search():
            q = q_host.to(dev, non_blocking=True)
            qn = (q * q).sum(dim=1, keepdim=True)
            best_d, best_i = None, None
            for r0 in range(0, rows, tile):
                d = qn + xn[r0:r0 + tile] - 2.0 * (q @ x[r0:r0 + tile].T)
                d.clamp_(min=0)
                vd, vi = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False, sorted=True)
                vi += r0
                if best_d is None:
                    best_d, best_i = vd, vi
                else:
                    cd, ci = torch.cat([best_d, vd], 1), torch.cat([best_i, vi], 1)
                    best_d, pos = torch.topk(cd, k, dim=1, largest=False, sorted=True)
                    best_i = torch.gather(ci, 1, pos)
            return best_d.cpu(), best_i.cpu()

        for _ in range(3):
            search()
        torch.cuda.synchronize()
        rates = []
        for _ in range(3):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 3:
                search()
                n += 1
            rates.append(n * nq / (time.perf_counter() - t0))
        rates.sort()
        print(f"nq {nq} queries_per_s {rates[1]:.1f} median of 3", flush=True)


if __name__ == "__main__":
    main()
