"""The error every layer raises for a value a user fixes in the config.

It lives at the bottom of the package so that `models`, `data` or `mesh` can
raise it without importing the config schema above them; `rlaif_jax.config`
re-exports it. `main` prints it as one line, `error: <message>`.
"""
from __future__ import annotations


class ConfigError(ValueError):
  """A config problem a user fixes by changing a value; printed as one line."""
