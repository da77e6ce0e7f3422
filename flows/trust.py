"""Which models a run accepts, from ``fleetscore.models`` settings: read where the flow runs, never a parameter.

The signing key is read from the flow process's environment or Key Vault each
time it is needed, so it never becomes a flow parameter, a task argument sent
to workers or a logged value; workers get only the :class:`ModelPolicy`.
"""

from __future__ import annotations

from cluster.config import setting
from scoring.model_format import ModelPolicy
from scoring.signing import SigningKey, load_key


def model_policy() -> ModelPolicy:
    """What workers may decode besides plain arrays: pickles (``allow-pickle``) and extra skops types."""
    return ModelPolicy(bool(setting("models.allow-pickle")), tuple(setting("models.skops-trusted") or ()))


def signing_key() -> SigningKey | None:
    """The configured manifest signing key, or ``None`` when none is configured."""
    return load_key(setting("models.signing-key-env"), setting("models.signing-key-vault"),
                    setting("models.signing-key-secret"))


def require_signature() -> bool:
    """Whether unsigned (or unverifiable) model versions are refused."""
    return bool(setting("models.require-signature"))
