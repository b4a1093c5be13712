"""The bound on a flow step's log-scale, shared by the autoregressive-flow prior and the IAF posterior:

    log sigma = B tanh(a / B),   so  -B < log sigma < B,   B = ``LOG_SCALE_BOUND`` = 5,

for the step's pre-activation a. A soft clamp: smooth, the identity to first order near 0 (a flow that starts near
the identity is unchanged) and bounded, so exp(+-log sigma) and the log-det -sum_i log sigma_i stay finite whatever
the network outputs; without it a diverging MADE gave log-scales of ~1e35 and densities of -inf. One step scales a
variable by e^-5 to e^5 (0.0067 to 148); K steps compound to e^(+-5K).
"""

from __future__ import annotations

import torch
from torch import Tensor

LOG_SCALE_BOUND = 5.0


def soft_clamp_log_scale(a: Tensor) -> Tensor:
    """B tanh(a / B): the bounded log-scale of a flow step (module docstring)."""
    return LOG_SCALE_BOUND * torch.tanh(a / LOG_SCALE_BOUND)
