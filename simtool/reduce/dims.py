"""How many dimensions N vectors need: the entropy rule (kexue.fm/7695, 8711) and the JL bound (8679).

Both use natural logarithms. The entropy rule, n > 8.33·ln N, is a practical lower bound
(N = 1e5 → 96, N = 5e6 → 128); the JL bound, n > 24·ln N / ε², guarantees every pairwise
squared distance within 1 ± ε with probability ≥ (N - 1)/N, and is far larger than needed
in practice (ε = 0.1 gives thousands of dimensions).
"""

from __future__ import annotations

import math

from simtool.errors import ParameterError

ENTROPY_COEFFICIENT = 8.33  # 2 / 0.2406..., from the minimum-entropy argument


def entropy_dim(n_vectors: int) -> int:
    """round(8.33·ln N)."""
    _check(n_vectors)
    return round(ENTROPY_COEFFICIENT * math.log(n_vectors))


def jl_dim(n_vectors: int, eps: float = 0.1) -> int:
    """ceil(24·ln N / ε²): the article's Johnson-Lindenstrauss bound for pairwise distances."""
    _check(n_vectors)
    if not 0 < eps < 1:
        raise ParameterError(f"eps must be in (0, 1), got {eps}")
    return math.ceil(24 * math.log(n_vectors) / eps**2)


def _check(n_vectors: int) -> None:
    if n_vectors < 2:
        raise ParameterError(f"n_vectors must be at least 2, got {n_vectors}")
