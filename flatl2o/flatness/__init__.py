"""The paper's two flatness measures, on any scalar function of a pytree.

Hessian (`hessian.py`): `hvp`, `hessian_trace` (Hutchinson),
`top_hessian_eigenvalue` (power iteration), `lanczos` (Ritz values, SLQ trace).
Local entropy (`entropy.py`): `langevin_mean`, `local_entropy_grad`
(gamma (x - mu)), `local_entropy_surrogate`, `local_entropy_gap` (-F - f).
This package imports nothing else from flatl2o.
"""

from flatl2o.flatness.entropy import (langevin_mean, local_entropy_gap, local_entropy_grad,
                                      local_entropy_surrogate)
from flatl2o.flatness.hessian import (LanczosResult, hessian_trace, hvp, lanczos,
                                      lanczos_top_eigenvalue, rademacher_like,
                                      top_hessian_eigenvalue)

__all__ = ["LanczosResult", "hessian_trace", "hvp", "lanczos", "lanczos_top_eigenvalue",
           "langevin_mean", "local_entropy_gap", "local_entropy_grad", "local_entropy_surrogate",
           "rademacher_like", "top_hessian_eigenvalue"]
