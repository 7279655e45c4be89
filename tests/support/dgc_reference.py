"""A numpy restatement of Deep Gradient Compression (Lin et al., 2018) on a run whose gradients are known
in advance: each rank's gradient of ``w`` (compressed) and ``b`` (too small to compress) is a fixed random
vector per step (a linear loss), plus weight decay. Per rank: velocity ``u = m*u + g`` (Nesterov: accumulate
``g + m*u``), accumulation ``v += u``, the k largest ``|v|`` (random-k: the drawn positions) sent and zeroed
in ``v`` and, with masking, in ``u``; the sum of what was sent is the update, applied by SGD without
momentum. The small tensor keeps plain momentum. No hvdkit code is used."""
import numpy as np

import oracle

N_W, N_B, STEPS, LR, MOMENTUM = 300, 4, 10, 0.1, 0.9  # sizes, steps and SGD settings of the run


def coefficients(rank, step):
    """This rank's gradient of the linear loss at ``step`` (any rank can recompute any rank's)."""
    rng = np.random.default_rng(1000 * step + rank)
    return rng.standard_normal(N_W).astype(np.float32), rng.standard_normal(N_B).astype(np.float32)


def density(ratio, ramp, step):
    """DGC's exponential warm-up: 1/4, 1/16, 1/64, 1/256 kept, a quarter of ``ramp`` steps each."""
    if step >= ramp:
        return ratio
    return max(ratio, 0.25 ** (1 + 4 * step // ramp))


def reference(ranks, kind, ratio, ramp=0, nesterov=False, mask=True, decay=0.0, seed_of=None):
    """Parameters (w, b) after STEPS steps of DGC, replayed in float32 numpy."""
    f32 = np.float32
    w, b = np.ones(N_W, f32), np.ones(N_B, f32)
    u = [np.zeros(N_W, f32) for _ in range(ranks)]
    v = [np.zeros(N_W, f32) for _ in range(ranks)]
    u_b = [np.zeros(N_B, f32) for _ in range(ranks)]
    for step in range(STEPS):
        update, update_b = np.zeros(N_W, f32), np.zeros(N_B, f32)
        k = oracle.keep_count(density(ratio, ramp, step), N_W)
        for r in range(ranks):
            c, d = coefficients(r, step)
            g = ((c + f32(decay) * w) / f32(ranks)).astype(f32)
            u[r] = (f32(MOMENTUM) * u[r] + g).astype(f32)
            v[r] = (v[r] + (g + f32(MOMENTUM) * u[r] if nesterov else u[r])).astype(f32)
            if kind == "topk":
                sent = np.argpartition(-np.abs(v[r]), k - 1)[:k]
            else:
                sent = oracle.randomk_positions(N_W, k, oracle.splitmix(0, seed_of, step))
            update[sent] += v[r][sent]
            v[r][sent] = 0
            if mask:
                u[r][sent] = 0
            g_b = ((d + f32(decay) * b) / f32(ranks)).astype(f32)
            u_b[r] = (f32(MOMENTUM) * u_b[r] + g_b).astype(f32)
            update_b += g_b + f32(MOMENTUM) * u_b[r] if nesterov else u_b[r]
        w, b = (w - f32(LR) * update).astype(f32), (b - f32(LR) * update_b).astype(f32)
    return w, b
