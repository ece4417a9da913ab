"""The Triton kernels run by Triton's CPU interpreter against the PyTorch maths (run in a subprocess with
TRITON_INTERPRET=1 by tests/kernels/test_triton_interpreter.py; prints one line per case, exits non-zero on a miss).

fp32 (exact products) and fp16 inputs are checked. bf16 is not: the Triton 3.6 interpreter returns garbage
for ``tl.dot`` on bf16 even in a one-line kernel, so the bf16 path can only be checked on a GPU.
"""

from __future__ import annotations

import sys

import torch

from topkrec.kernels import triton_softmax as ts

CASES = [(5, 300, 8), (70, 1000, 16), (130, 700, 64)]
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-5, 1e-3)}  # (lse abs, gradient rel)


def main() -> int:
    torch.manual_seed(0)
    failed = 0
    for dtype, (lse_tol, grad_tol) in TOLERANCE.items():
        for n_rows, n_cols, d in CASES:
            h, w, b = torch.randn(n_rows, d), torch.randn(n_cols, d) * 0.3, torch.randn(n_cols) * 0.1
            hq, wq = h.to(dtype).float(), w.to(dtype).float()
            logits = hq @ wq.t() + b
            g = torch.randn(n_rows)
            coef = g[:, None] * torch.softmax(logits, 1)
            want = (torch.logsumexp(logits, 1), -coef @ wq, -coef.t() @ hq, -coef.sum(0))
            lse = ts.logsumexp_forward(h, w, b, dtype)
            got = (lse, *ts.logsumexp_backward(h, w, b, lse, g, dtype, (True, True, True)))
            lse_err = float((got[0] - want[0]).abs().max())
            grad_err = max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(got[1:], want[1:], strict=True))
            ok = lse_err <= lse_tol and grad_err <= grad_tol
            failed += not ok
            verdict = "ok" if ok else "MISS"
            print(f"{dtype} rows {n_rows} cols {n_cols} d {d}: lse {lse_err:.1e} grad rel {grad_err:.1e} {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
