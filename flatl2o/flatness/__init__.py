"""The paper's two flatness measures, on any scalar function of a pytree.

Hessian (`hessian.py`): `hvp`, `hessian_trace` (Hutchinson),
`top_hessian_eigenvalue` (power iteration), `lanczos` (Ritz values and weights,
SLQ trace), and the random pytrees they draw, `rademacher_like` and `normal_like`.
Local entropy (`entropy.py`): `langevin_chains` (every chain's final state and
running mean), `langevin_mean` (their mean), `local_entropy_grad`
(gamma (x - mu)), `local_entropy_surrogate`, `local_entropy_gap` (-F - f).
Loss landscape (`landscape.py`, Li et al. 2018): `filter_normalized_direction`,
`loss_slice_1d`, `loss_slice_2d`, and `hessian_spectrum` (SLQ nodes of the
eigenvalue density, `HessianSpectrum`).
This package imports nothing else from flatl2o.
"""

from flatl2o.flatness.entropy import (LangevinChains, langevin_chains, langevin_mean,
                                      local_entropy_gap, local_entropy_grad,
                                      local_entropy_surrogate)
from flatl2o.flatness.hessian import (LanczosResult, hessian_trace, hvp, lanczos,
                                      lanczos_top_eigenvalue, normal_like, rademacher_like,
                                      top_hessian_eigenvalue)
from flatl2o.flatness.landscape import (HessianSpectrum, filter_normalized_direction,
                                        hessian_spectrum, loss_slice_1d, loss_slice_2d)

__all__ = ["HessianSpectrum", "LanczosResult", "LangevinChains", "filter_normalized_direction",
           "hessian_spectrum", "hessian_trace", "hvp", "lanczos", "lanczos_top_eigenvalue",
           "langevin_chains", "langevin_mean", "local_entropy_gap", "local_entropy_grad",
           "local_entropy_surrogate", "loss_slice_1d", "loss_slice_2d", "normal_like",
           "rademacher_like", "top_hessian_eigenvalue"]
