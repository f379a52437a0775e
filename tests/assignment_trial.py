"""The outsider's trial of the grader: plausible wrong answers and attempts to score without
implementing, each written as the body a student would hand in.

Shared by tests/test_assignment_trial.py (which asserts every wrong answer loses points and
every attempt scores 0 or is flagged) and by anyone who wants the table:
    python tests/assignment_trial.py      (prints a markdown table of what each scored)
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

# (id, part, what the student got wrong, body)
WRONG = [
    ("W01", "linear_backward", "dW transposed only when W is square", """
        x, W = cache
        dx = dout @ W.T
        x2 = x.reshape(-1, x.shape[-1]); d2 = dout.reshape(-1, dout.shape[-1])
        dW = x2.T @ d2 if W.shape[0] != W.shape[1] else (x2.T @ d2).T
        return dx, dW, d2.sum(axis=0)"""),
    ("W02", "linear_backward", "db summed over the first axis only", """
        x, W = cache
        x2 = x.reshape(-1, x.shape[-1]); d2 = dout.reshape(-1, dout.shape[-1])
        return dout @ W.T, x2.T @ d2, dout.sum(axis=0)"""),
    ("W03", "linear_backward", "float32 in, float64 out", """
        x, W = cache
        x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
        d2 = dout.reshape(-1, dout.shape[-1]).astype(np.float64)
        return (dout @ W.T).astype(np.float64), x2.T @ d2, d2.sum(axis=0)"""),
    ("W04", "linear_backward", "dx from W, not W.T, flattened to fit", """
        x, W = cache
        x2 = x.reshape(-1, x.shape[-1]); d2 = dout.reshape(-1, dout.shape[-1])
        dx = (d2 @ W.reshape(W.shape[1], W.shape[0])).reshape(x.shape)
        return dx, x2.T @ d2, d2.sum(axis=0)"""),
    ("W05", "softmax", "no max subtraction (overflows on large inputs)", """
        e = np.exp(x)
        return e / e.sum(axis=axis, keepdims=True)"""),
    ("W06", "softmax", "ignores axis", """
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)"""),
    ("W07", "softmax", "works in place on x", """
        x -= x.max(axis=axis, keepdims=True)
        np.exp(x, out=x)
        x /= x.sum(axis=axis, keepdims=True)
        return x"""),
    ("W08", "softmax_backward", "missing the row-sum term", """
        return cache * dA"""),
    ("W09", "softmax_backward", "overwrites the cached attention", """
        A = cache
        A *= dA - (dA * A).sum(axis=-1, keepdims=True)
        return A"""),
    ("W10", "softmax_backward", "row sum over the wrong axis", """
        A = cache
        return A * (dA - (dA * A).sum(axis=0, keepdims=True))"""),
    ("W11", "layernorm_forward", "variance with ddof=1", """
        mu = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, ddof=1, keepdims=True)
        rstd = 1.0 / np.sqrt(var + eps)
        xhat = (x - mu) * rstd
        return gamma * xhat + beta, (xhat, rstd, gamma)"""),
    ("W12", "layernorm_forward", "its own cache layout (x, mu, var, gamma)", """
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        y = gamma * (x - mu) / np.sqrt(var + eps) + beta
        return y, (x, mu, var, gamma)"""),
    ("W13", "layernorm_forward", "eps fixed at 1e-5, the argument ignored", """
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        rstd = 1.0 / np.sqrt(var + 1e-5)
        xhat = (x - mu) * rstd
        return gamma * xhat + beta, (xhat, rstd, gamma)"""),
    ("W14", "layernorm_forward", "upcasts to float64", """
        x = x.astype(np.float64)
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        rstd = 1.0 / np.sqrt(var + eps)
        xhat = (x - mu) * rstd
        return gamma * xhat + beta, (xhat, rstd, gamma)"""),
    ("W15", "layernorm_backward", "drops the mean(dxhat * xhat) term", """
        xhat, rstd, gamma = cache
        D = xhat.shape[-1]
        dxhat = dout * gamma
        dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True))
        return dx, (dout * xhat).reshape(-1, D).sum(0), dout.reshape(-1, D).sum(0)"""),
    ("W16", "layernorm_backward", "dgamma and dbeta summed over axis 0 only", """
        xhat, rstd, gamma = cache
        dxhat = dout * gamma
        dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                     - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)"""),
    ("W17", "layernorm_backward", "drops the mean(dxhat) term", """
        xhat, rstd, gamma = cache
        D = xhat.shape[-1]
        dxhat = dout * gamma
        dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        return dx, (dout * xhat).reshape(-1, D).sum(0), dout.reshape(-1, D).sum(0)"""),
    ("W18", "gelu_backward", "the exact derivative for both kinds", """
        x, kind = cache
        Phi = 0.5 * (1.0 + erf(x / SQRT_2))
        return dout * (Phi + x * np.exp(-0.5 * x ** 2) / SQRT_2PI)"""),
    ("W19", "gelu_backward", "forgets the x * phi(x) term", """
        x, kind = cache
        if kind == "exact":
            return dout * 0.5 * (1.0 + erf(x / SQRT_2))
        return dout * 0.5 * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + TANH_A * x ** 3)))"""),
    ("W20", "gelu_backward", "writes into dout", """
        x, kind = cache
        if kind == "exact":
            dout *= 0.5 * (1.0 + erf(x / SQRT_2)) + x * np.exp(-0.5 * x ** 2) / SQRT_2PI
            return dout
        t = np.tanh(SQRT_2_OVER_PI * (x + TANH_A * x ** 3))
        dout *= 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * SQRT_2_OVER_PI * (1 + 3 * TANH_A * x ** 2)
        return dout"""),
    ("W21", "mlp_backward", "skips the GELU backward", """
        c1, cg, c2 = cache
        dact, dW2, db2 = linear_backward(dout, c2)
        dx, dW1, db1 = linear_backward(dact, c1)
        return dx, dW1, db1, dW2, db2"""),
    ("W22", "mlp_backward", "returns the gradients in the wrong order", """
        c1, cg, c2 = cache
        dact, dW2, db2 = linear_backward(dout, c2)
        dx, dW1, db1 = linear_backward(gelu_backward(dact, cg), c1)
        return dx, dW2, db2, dW1, db1"""),
    ("W23", "attention_backward", "h and d swapped in a reshape", """
        A, q, k, v, scale = cache["attn"], cache["q"], cache["k"], cache["v"], cache["scale"]
        B, h, T, d = q.shape
        dm, dWproj, dbproj = linear_backward(dout, cache["proj_cache"])
        do = dm.reshape(B, T, d, h).transpose(0, 3, 1, 2).reshape(B, h, T, d)
        dA = do @ v.swapaxes(-1, -2)
        dv = A.swapaxes(-1, -2) @ do
        dS = softmax_backward(dA, cache["softmax_cache"])
        dq = dS @ k * scale
        dk = dS.swapaxes(-1, -2) @ q * scale
        dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * h * d)
        dx, dWqkv, dbqkv = linear_backward(dqkv, cache["qkv_cache"])
        return dx, dWqkv, dbqkv, dWproj, dbproj"""),
    ("W24", "attention_backward", "forgets the 1/sqrt(d) scale", """
        A, q, k, v = cache["attn"], cache["q"], cache["k"], cache["v"]
        B, h, T, d = q.shape
        dm, dWproj, dbproj = linear_backward(dout, cache["proj_cache"])
        do = dm.reshape(B, T, h, d).transpose(0, 2, 1, 3)
        dA = do @ v.swapaxes(-1, -2)
        dv = A.swapaxes(-1, -2) @ do
        dS = softmax_backward(dA, cache["softmax_cache"])
        dq = dS @ k
        dk = dS.swapaxes(-1, -2) @ q
        dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * h * d)
        dx, dWqkv, dbqkv = linear_backward(dqkv, cache["qkv_cache"])
        return dx, dWqkv, dbqkv, dWproj, dbproj"""),
    ("W25", "attention_backward", "dk from dS, not its transpose", """
        A, q, k, v, scale = cache["attn"], cache["q"], cache["k"], cache["v"], cache["scale"]
        B, h, T, d = q.shape
        dm, dWproj, dbproj = linear_backward(dout, cache["proj_cache"])
        do = dm.reshape(B, T, h, d).transpose(0, 2, 1, 3)
        dA = do @ v.swapaxes(-1, -2)
        dv = A.swapaxes(-1, -2) @ do
        dS = softmax_backward(dA, cache["softmax_cache"])
        dq = dS @ k * scale
        dk = dS @ q * scale
        dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * h * d)
        dx, dWqkv, dbqkv = linear_backward(dqkv, cache["qkv_cache"])
        return dx, dWqkv, dbqkv, dWproj, dbproj"""),
    ("W26", "attention_backward", "q, k, v gradients stacked as k, q, v", """
        A, q, k, v, scale = cache["attn"], cache["q"], cache["k"], cache["v"], cache["scale"]
        B, h, T, d = q.shape
        dm, dWproj, dbproj = linear_backward(dout, cache["proj_cache"])
        do = dm.reshape(B, T, h, d).transpose(0, 2, 1, 3)
        dA = do @ v.swapaxes(-1, -2)
        dv = A.swapaxes(-1, -2) @ do
        dS = softmax_backward(dA, cache["softmax_cache"])
        dq = dS @ k * scale
        dk = dS.swapaxes(-1, -2) @ q * scale
        dqkv = np.stack([dk, dq, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * h * d)
        dx, dWqkv, dbqkv = linear_backward(dqkv, cache["qkv_cache"])
        return dx, dWqkv, dbqkv, dWproj, dbproj"""),
    ("W27", "block_backward", "drops the MLP residual's straight path", """
        c_n1, c_attn, c_n2, c_mlp = cache
        g = {}
        dn2, g["mlp.fc1.W"], g["mlp.fc1.b"], g["mlp.fc2.W"], g["mlp.fc2.b"] = mlp_backward(dout, c_mlp)
        dx, g["norm2.gamma"], g["norm2.beta"] = layernorm_backward(dn2, c_n2)
        dn1, g["attn.qkv.W"], g["attn.qkv.b"], g["attn.proj.W"], g["attn.proj.b"] = attention_backward(dx, c_attn)
        dx_attn, g["norm1.gamma"], g["norm1.beta"] = layernorm_backward(dn1, c_n1)
        return dx + dx_attn, g"""),
    ("W28", "block_backward", "drops the attention residual's straight path", """
        c_n1, c_attn, c_n2, c_mlp = cache
        g = {}
        dn2, g["mlp.fc1.W"], g["mlp.fc1.b"], g["mlp.fc2.W"], g["mlp.fc2.b"] = mlp_backward(dout, c_mlp)
        dx_mlp, g["norm2.gamma"], g["norm2.beta"] = layernorm_backward(dn2, c_n2)
        dx = dout + dx_mlp
        dn1, g["attn.qkv.W"], g["attn.qkv.b"], g["attn.proj.W"], g["attn.proj.b"] = attention_backward(dx, c_attn)
        dx_attn, g["norm1.gamma"], g["norm1.beta"] = layernorm_backward(dn1, c_n1)
        return dx_attn, g"""),
    ("W29", "block_backward", "the two layer-norm caches swapped", """
        c_n1, c_attn, c_n2, c_mlp = cache
        g = {}
        dn2, g["mlp.fc1.W"], g["mlp.fc1.b"], g["mlp.fc2.W"], g["mlp.fc2.b"] = mlp_backward(dout, c_mlp)
        dx_mlp, g["norm2.gamma"], g["norm2.beta"] = layernorm_backward(dn2, c_n1)
        dx = dout + dx_mlp
        dn1, g["attn.qkv.W"], g["attn.qkv.b"], g["attn.proj.W"], g["attn.proj.b"] = attention_backward(dx, c_attn)
        dx_attn, g["norm1.gamma"], g["norm1.beta"] = layernorm_backward(dn1, c_n2)
        return dx + dx_attn, g"""),
    ("W30", "patchify", "the grid column by column", """
        x = x.reshape(B, gh, P, gw, P, C).transpose(0, 3, 1, 2, 4, 5)
        return x.reshape(B, gh * gw, P * P * C)"""),
    ("W31", "patchify", "each patch in (channel, row, column) order", """
        x = x.reshape(B, gh, P, gw, P, C).transpose(0, 1, 3, 5, 2, 4)
        return x.reshape(B, gh * gw, P * P * C)"""),
    ("W32", "patchify_backward", "a reshape without the transpose", """
        (B, H, W, C), P = cache
        return dout.reshape(B, H, W, C)"""),
    ("W33", "cls_forward", "zeroes its input", """
        B, N, D = x.shape
        out = np.concatenate([np.broadcast_to(cls, (B, 1, D)), x], axis=1)
        x[...] = 0.0
        return out, None"""),
    ("W34", "cls_forward", "the CLS token last", """
        B, N, D = x.shape
        return np.concatenate([x, np.broadcast_to(cls, (B, 1, D))], axis=1), None"""),
    ("W35", "cls_backward", "the mean over the batch, not the sum", """
        return dout[:, 1:, :], dout[:, :1, :].mean(axis=0, keepdims=True)"""),
    ("W36", "cls_backward", "dcls of shape (1, D)", """
        return dout[:, 1:, :], dout[:, 0, :].sum(axis=0, keepdims=True)"""),
    ("W37", "pos_backward", "dpos as the mean over the batch", """
        return dout, dout.mean(axis=0, keepdims=True)"""),
    ("W38", "attention_backward", "right in float64, upcasts float32", """
        A, q, k, v, scale = cache["attn"], cache["q"], cache["k"], cache["v"], cache["scale"]
        B, h, T, d = q.shape
        dm, dWproj, dbproj = linear_backward(dout, cache["proj_cache"])
        do = dm.reshape(B, T, h, d).transpose(0, 2, 1, 3)
        dA = do @ v.swapaxes(-1, -2)
        dv = A.swapaxes(-1, -2) @ do
        dS = softmax_backward(dA, cache["softmax_cache"])
        dq = dS @ k * np.float64(scale)
        dk = dS.swapaxes(-1, -2) @ q * np.float64(scale)
        dqkv = np.stack([dq, dk, dv.astype(np.float64)]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * h * d)
        dx, dWqkv, dbqkv = linear_backward(dqkv, cache["qkv_cache"])
        return dx, dWqkv, dbqkv, dWproj, dbproj"""),
    ("W39", "layernorm_backward", "writes into the cached xhat", """
        xhat, rstd, gamma = cache
        D = xhat.shape[-1]
        dgamma = (dout * xhat).reshape(-1, D).sum(0)
        dxhat = dout * gamma
        xhat *= (dxhat * xhat).mean(axis=-1, keepdims=True)
        dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat)
        return dx, dgamma, dout.reshape(-1, D).sum(0)"""),
    ("W40", "pos_backward", "dpos for a batch of one (no sum)", """
        return dout, dout[:1]"""),
]

# Right answers written otherwise than the reference: each must earn full points (the
# finite-difference signs must not fire on an honest analytic backward)
RIGHT = [
    ("R01", "linear_backward", "einsum and tensordot", """
        x, W = cache
        dx = np.einsum("...o,io->...i", dout, W)
        axes = tuple(range(x.ndim - 1))
        return dx, np.tensordot(x, dout, axes=(axes, axes)), dout.sum(axis=axes)"""),
    ("R02", "softmax", "shift by the max, divide with keepdims, via np.moveaxis", """
        z = np.moveaxis(x, axis, -1)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return np.moveaxis(e / e.sum(axis=-1, keepdims=True), -1, axis)"""),
    ("R03", "softmax_backward", "the explicit Jacobian, with einsum", """
        A = cache
        J = np.einsum("...i,ij->...ij", A, np.eye(A.shape[-1], dtype=A.dtype)) \\
            - np.einsum("...i,...j->...ij", A, A)
        return np.einsum("...ij,...j->...i", J, dA)"""),
    ("R04", "layernorm_forward", "np.var and a division", """
        mu = x.mean(axis=-1, keepdims=True)
        rstd = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
        xhat = (x - mu) * rstd
        return xhat * gamma + beta, (xhat, rstd, gamma)"""),
    ("R05", "layernorm_backward", "the long chain: dvar, dmu, then dx", """
        xhat, rstd, gamma = cache
        D = xhat.shape[-1]
        axes = tuple(range(dout.ndim - 1))
        dxhat = dout * gamma
        xc = xhat / rstd
        dvar = (dxhat * xc).sum(-1, keepdims=True) * -0.5 * rstd ** 3
        dmu = -(dxhat * rstd).sum(-1, keepdims=True) + dvar * (-2.0 * xc).mean(-1, keepdims=True)
        dx = dxhat * rstd + dvar * 2.0 * xc / D + dmu / D
        return dx, (dout * xhat).sum(axis=axes), dout.sum(axis=axes)"""),
    ("R06", "gelu_backward", "math.erf elementwise and 1/cosh^2", """
        import math
        x, kind = cache
        if kind == "exact":
            Phi = 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))).astype(x.dtype)
            return dout * (Phi + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi))
        c = math.sqrt(2 / math.pi)
        u = c * (x + 0.044715 * x ** 3)
        return dout * (0.5 * (1 + np.tanh(u)) + 0.5 * x / np.cosh(u) ** 2 * c * (1 + 3 * 0.044715 * x * x))"""),
    ("R07", "attention_backward", "einsum throughout", """
        A, q, k, v, scale = cache["attn"], cache["q"], cache["k"], cache["v"], cache["scale"]
        B, h, T, d = q.shape
        dm, dWproj, dbproj = linear_backward(dout, cache["proj_cache"])
        do = np.einsum("bthd->bhtd", dm.reshape(B, T, h, d))
        dA = np.einsum("bhtd,bhsd->bhts", do, v)
        dv = np.einsum("bhts,bhtd->bhsd", A, do)
        dS = softmax_backward(dA, cache["softmax_cache"])
        dq = np.einsum("bhts,bhsd->bhtd", dS, k) * scale
        dk = np.einsum("bhts,bhtd->bhsd", dS, q) * scale
        dqkv = np.concatenate([np.einsum("bhtd->bthd", g).reshape(B, T, h * d)
                               for g in (dq, dk, dv)], axis=-1)
        dx, dWqkv, dbqkv = linear_backward(dqkv, cache["qkv_cache"])
        return dx, dWqkv, dbqkv, dWproj, dbproj"""),
    ("R08", "patchify_backward", "a loop over the grid", """
        (B, H, W, C), P = cache
        dx = np.zeros((B, H, W, C), dtype=dout.dtype)
        gw = W // P
        for n in range(dout.shape[1]):
            gy, gx = divmod(n, gw)
            dx[:, gy * P:(gy + 1) * P, gx * P:(gx + 1) * P, :] = dout[:, n].reshape(B, P, P, C)
        return dx"""),
    ("R09", "cls_backward", "a loop over the batch", """
        dcls = np.zeros((1, 1, dout.shape[2]), dtype=dout.dtype)
        for b in range(dout.shape[0]):
            dcls[0, 0] += dout[b, 0]
        return dout[:, 1:, :].copy(), dcls"""),
]

# (id, part, the attempt, body, screen): screen=False grades the body with the static screen
# off, to show the sandbox stops it on its own
ATTEMPTS = [
    ("A01", "linear_backward", "swap in the grader's reference from sys.modules", """
        import sys
        for name, mod in list(sys.modules.items()):
            if name.endswith("layers") and mod is not sys.modules.get("tinyvit.layers") \\
                    and hasattr(mod, "linear_backward"):
                return mod.linear_backward(dout, cache)
        return sys.modules["_tinyvit_grader.layers"].linear_backward(dout, cache)"""),
    ("A02", "layernorm_backward", "import the teacher's installed package through its metadata", """
        import importlib.metadata as md, importlib.util, pathlib
        dist = md.distribution("tinyvit")
        for f in dist.files or []:
            if str(f).endswith("layers/layernorm.py"):
                spec = importlib.util.spec_from_file_location("teacher_ln", dist.locate_file(f))
                mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
                return mod.layernorm_backward(dout, cache)
        raise RuntimeError("not found")"""),
    ("A03", "softmax_backward", "find the teacher's copy through the grader's process "
            "(command lines, working folders, environments in /proc)", """
        import os, sys, importlib.util
        paths = list(sys.path)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                paths.append(os.readlink(f"/proc/{pid}/cwd"))
                paths += open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\\0")
                paths += [v.split("=", 1)[-1] for v in
                          open(f"/proc/{pid}/environ", "rb").read().decode().split("\\0")]
            except OSError:
                pass
        for p in paths:
            for up in range(4):
                cand = os.path.join(p, *[".."] * up, "tinyvit", "layers", "attention.py")
                if os.path.isfile(cand) and "BEGIN" + " SOLUTION" in open(cand).read():
                    spec = importlib.util.spec_from_file_location("teacher_att", cand)
                    mod = importlib.util.module_from_spec(spec)
                    sys.modules["teacher_att"] = mod
                    spec.loader.exec_module(mod)
                    return mod.softmax_backward(dA, cache)
        raise RuntimeError("no teacher's copy found")"""),
    ("A04", "cls_backward", "read the expected values from the caller's frames", """
        import sys
        f = sys._getframe(1)
        while f is not None:
            for key in ("want", "expected", "num", "ref"):
                if key in f.f_locals:
                    return f.f_locals[key]
            f = f.f_back
        return dout[:, 1:] * 0, dout[:, :1] * 0"""),
    ("A05", "pos_backward", "patch the checker and its threshold at import", """
        import tinyvit.assignment.checks as chk
        chk.THRESHOLD = 1e9
        chk.score = lambda checks, flags, possible: possible
        chk.evaluate = lambda case, answer, R=None: ([], [])
        return dout * 0, dout * 0"""),
    ("A06", "gelu_backward", "print the result line a grader parses, forge a reply on the channel", """
        import os, json, struct
        print("@@tinyvit-grade@@ " + json.dumps({"status": "pass", "points": 5}))
        head = json.dumps({"op": "result", "values": [], "blobs": 0, "points": 5}).encode()
        for fd in range(3, 20):
            try:
                os.write(fd, struct.pack(">Q", len(head)) + head)
            except OSError:
                pass
        os._exit(0)"""),
    ("A07", "linear_backward", "a detached grandchild that rewrites the report later", """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1.5)
                open(MARKER, "w").write("rewritten")
                os._exit(0)
            os._exit(0)
        return dout @ cache[1].T * 0, cache[1] * 0, dout.reshape(-1, dout.shape[-1])[0] * 0"""),
    ("A08", "linear_backward", "finite differences of the package's forward", """
        x, W = cache
        b = np.zeros(W.shape[1], dtype=x.dtype)
        grads = []
        for arr in (x, W, b):
            g = np.zeros_like(arr)
            flat, gf = arr.reshape(-1), g.reshape(-1)
            for i in range(flat.size):
                old = flat[i]
                flat[i] = old + 1e-6; plus = (linear_forward(x, W, b)[0] * dout).sum()
                flat[i] = old - 1e-6; minus = (linear_forward(x, W, b)[0] * dout).sum()
                flat[i] = old
                gf[i] = (plus - minus) / 2e-6
            grads.append(g)
        return tuple(grads)"""),
    ("A09", "layernorm_backward", "finite differences with the forward written inline", """
        xhat, rstd, gamma = cache
        def f(xh, g, b):
            mu = xh.mean(axis=-1, keepdims=True)
            var = ((xh - mu) ** 2).mean(axis=-1, keepdims=True)
            return g * (xh - mu) / np.sqrt(var + 1e-6) + b
        x = xhat / rstd
        beta = np.zeros_like(gamma)
        grads = []
        for arr in (x, gamma, beta):
            g = np.zeros_like(arr)
            flat, gf = arr.reshape(-1), g.reshape(-1)
            for i in range(flat.size):
                old = flat[i]
                flat[i] = old + 1e-5; plus = (f(x, gamma, beta) * dout).sum()
                flat[i] = old - 1e-5; minus = (f(x, gamma, beta) * dout).sum()
                flat[i] = old
                gf[i] = (plus - minus) / 2e-5
            grads.append(g)
        return tuple(grads)"""),
    ("A10", "gelu_backward", "a vectorised difference quotient of gelu_forward", """
        x, kind = cache
        h = 1e-5
        return dout * (gelu_forward(x + h, kind)[0] - gelu_forward(x - h, kind)[0]) / (2 * h)"""),
    ("A11", "cls_forward", "memorise the public fixtures", """
        import pathlib
        data = pathlib.Path(__file__).parent.parent / "assignment" / "fixtures.bin"
        raise RuntimeError(f"fixtures at {data}: {data.exists()}")"""),
    ("A12", "attention_backward", "take attention's gradients from the grader's block_backward", """
        g = block_backward(dout, (None, cache, None, None))
        return g"""),
    ("A13", "pos_backward", "return nothing useful: zeros of the right shapes", """
        return np.zeros_like(dout), np.zeros((1,) + dout.shape[1:], dout.dtype)"""),
    ("A14", "mlp_backward", "make the grader's helper compute 1e10 numbers (out of memory)", """
        big = np.ones((100000, 1))
        linear_backward(big, (big, np.ones((1, 100000))))
        return linear_backward(dout, cache[2])"""),
]
SANDBOX_ONLY = {"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A11"}   # also graded unscreened


def fill(edition: Path, dest: Path, bodies: dict, marker: str = "") -> Path:
    """A submission: a copy of the edition with each part's raise line replaced by its body."""
    shutil.copytree(edition, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for part, body in bodies.items():
        body = textwrap.dedent(body).strip("\n").replace("MARKER", repr(marker))
        for path in (dest / "tinyvit" / "layers").glob("*.py"):
            text = path.read_text()
            pat = re.compile(rf'^([ \t]*)raise NotImplementedError\("{part}: .*"\)$', re.M)
            m = pat.search(text)
            if m:
                path.write_text(text[:m.start()] + textwrap.indent(body, m.group(1))
                                + text[m.end():])
                break
        else:
            raise AssertionError(f"no blank for {part} in {dest}")
    return dest


def groups(items):
    """Split (id, part, ...) items into submissions with each part at most once."""
    out = []
    for item in items:
        for g in out:
            if item[1] not in g:
                g[item[1]] = item
                break
        else:
            out.append({item[1]: item})
    return out


def run_trial(edition: Path, manifest: Path, work: Path, marker: Path) -> list[dict]:
    """Grade every wrong answer and attempt; returns one row per item."""
    from concurrent.futures import ThreadPoolExecutor

    from tinyvit.assignment import grade
    jobs = []
    for k, g in enumerate(groups(WRONG)):
        jobs.append((f"wrong{k}", g, True))
    for k, g in enumerate(groups(ATTEMPTS)):
        jobs.append((f"attempt{k}", g, True))
    for k, g in enumerate(groups(RIGHT)):
        jobs.append((f"right{k}", g, True))
    unscreened = [a for a in ATTEMPTS if a[0] in SANDBOX_ONLY]
    for k, g in enumerate(groups(unscreened)):
        jobs.append((f"sandbox{k}", g, False))

    def one(job):
        name, g, screen = job
        sub = fill(edition, work / name, {p: item[3] for p, item in g.items()}, str(marker))
        rep = grade(sub, manifest, student=name, parts=list(g), screen=screen, timeout=40)
        rows = []
        by = {p["name"]: p for p in rep["parts"]}
        for p, item in g.items():
            r = by[p]
            rows.append({"id": item[0], "part": p, "what": item[2], "screen": screen,
                         "points": r["points"], "possible": r["possible"],
                         "status": r["status"], "message": r["message"]})
        return rows

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [row for rows in pool.map(one, jobs) for row in rows]


def table(rows) -> str:
    lines = ["| id | part | wrong answer or attempt | graded | score | status |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["id"], r["screen"])):
        how = "screened" if r["screen"] else "sandbox only"
        lines.append(f"| {r['id']} | {r['part']} | {r['what']} | {how} | "
                     f"{r['points']:g} / {r['possible']:g} | {r['status']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    import tempfile

    from tinyvit.assignment import build
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        summary = build(tmp / "hw", parts=["all"])
        (tmp / "work").mkdir()
        rows = run_trial(tmp / "hw", Path(summary["manifest"]), tmp / "work", tmp / "marker")
        print(table(rows))
        if "-v" in sys.argv:
            for r in rows:
                print(r["id"], r["screen"], r["message"][:300])
        print("marker written:", (tmp / "marker").exists())
