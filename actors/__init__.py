"""qfleet actors: environment configuration and transition specs (env actors come next).

Public surface: EnvConfig, transition_spec, spec_for_spaces, UnsupportedEnvError.
"""

from actors.config import EnvConfig
from actors.spec import UnsupportedEnvError, spec_for_spaces, transition_spec

__all__ = ["EnvConfig", "UnsupportedEnvError", "spec_for_spaces", "transition_spec"]
