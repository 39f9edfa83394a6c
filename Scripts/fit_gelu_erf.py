"""Fits the rational approximation of erf(x/√2) used by the AVX2 GELU (Sources/CKernels/gemm.c).

erf(x/√2) ≈ x·P(x²)/Q(x²) on [0, 5.6], P of degree 5 and Q of degree 5 in x² with Q(0) = 1:
linearised least squares (Sanathanan–Koerner reweighting by 1/Q), then Lawson reweighting towards
the minimax error; the iteration with the smallest maximum error is printed, as float32 literals
(numerator from x¹, denominator from x²). Run with the reference environment:
    .venv-reference/bin/python Scripts/fit_gelu_erf.py
"""
import mpmath
import numpy as np

mpmath.mp.dps = 30
X, N = 5.6, 4000
k = np.arange(N)
x = X * (1 - np.cos(np.pi * (k + 0.5) / N)) / 2  # Chebyshev nodes on [0, X]
f = np.array([float(mpmath.erf(mpmath.mpf(v) / mpmath.sqrt(2))) for v in x])
t = x * x
NA, NB = 6, 5  # numerator a1, a3, …, a11; denominator 1 + b2·x² + … + b10·x¹⁰

def design(w):
    return np.stack([w * x * t**j for j in range(NA)] + [-(w * f * t**j) for j in range(1, NB + 1)], axis=1)

w, lw = np.ones(N), np.ones(N)
best, coef = np.inf, None
for it in range(200):
    sol, *_ = np.linalg.lstsq(design(w * lw), w * lw * f, rcond=None)
    a, b = sol[:NA], sol[NA:]
    p = sum(a[j] * x * t**j for j in range(NA))
    q = 1 + sum(b[j - 1] * t**j for j in range(1, NB + 1))
    err = np.abs(p / q - f)
    if err.max() < best:
        best, coef = err.max(), (a.copy(), b.copy())
    w = 1 / q
    if it >= 10:
        lw = lw * (err + 1e-30)
        lw /= lw.sum() / N
print(f"max |error| in float64: {best:.3g}")
print("numerator:  ", ", ".join(f"{np.float32(v):.10e}f" for v in coef[0]))
print("denominator:", ", ".join(f"{np.float32(v):.10e}f" for v in coef[1]))
