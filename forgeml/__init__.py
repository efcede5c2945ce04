"""forgeml: an on-premises model factory (curate, tokenize, pre-train, evaluate, register)."""

from forgeml.core.runtime import enforce_offline

enforce_offline()

__version__ = "0.1.0"
