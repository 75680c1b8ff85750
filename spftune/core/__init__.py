"""The SPF gradient filter. Imports only torch (a test enforces it)."""

from spftune.core.config import DEFAULT_SAFETY_EXAMPLE, SafetyExample, SPFConfig
from spftune.core.filter import SPFFilter

__all__ = ["SPFConfig", "SPFFilter", "SafetyExample", "DEFAULT_SAFETY_EXAMPLE"]
