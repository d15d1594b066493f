"""qfleet actors: environment configuration, transition specs, n-step transitions and the
Ape-X exploration schedule (the Ray env actors come next).

Public surface: EnvConfig, transition_spec, spec_for_spaces, UnsupportedEnvError,
NStepAccumulator, apex_epsilons.
"""

from actors.config import EnvConfig
from actors.nstep import NStepAccumulator, apex_epsilons
from actors.spec import UnsupportedEnvError, spec_for_spaces, transition_spec

__all__ = [
    "EnvConfig",
    "NStepAccumulator",
    "UnsupportedEnvError",
    "apex_epsilons",
    "spec_for_spaces",
    "transition_spec",
]
