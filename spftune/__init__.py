"""spftune: safety-preserving fine-tuning of aligned chat models.

The core (:mod:`spftune.core`) imports only torch. Integrations that need transformers are loaded lazily, so
``import spftune`` stays light and ``from spftune import SPFCallback`` works when transformers is installed.
"""

from spftune.core import SPFConfig, SPFFilter

__all__ = ["SPFConfig", "SPFFilter", "SPFCallback", "add_spf_callback"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: the callback subclasses transformers.TrainerCallback, and importing transformers costs seconds.
    if name in ("SPFCallback", "add_spf_callback"):
        from spftune.integrations import trainer as _hf

        return getattr(_hf, name)
    raise AttributeError(f"module 'spftune' has no attribute {name!r}")
