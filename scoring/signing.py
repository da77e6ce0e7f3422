"""Signed manifests: an HMAC-SHA256 of a version's manifest bytes, with a key the store does not hold.

A model's sha256 in the manifest proves the file is the one the manifest
names, not who wrote it: whoever can write a model can write its digest too.
An HMAC over the manifest with a key kept outside the store (an environment
variable, or an Azure Key Vault secret) makes the manifest, and through its
digests every model, authentic. HMAC comes from the standard library
(:mod:`hmac`); the key never leaves the process that read it: a
:class:`SigningKey` shows only where it came from and refuses to be pickled.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SCHEME = "hmac-sha256"
MIN_KEY_BYTES = 32
"""As long as the hash's output: a shorter HMAC key is easier to guess than the MAC itself."""


class SignatureError(ValueError):
    """A manifest that must not be used: its signature is missing, does not verify, or cannot be checked."""


class SigningKey:
    """A secret for signing and verifying manifests; ``repr`` names its source, never its value."""

    def __init__(self, secret: bytes, source: str) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ValueError(f"the signing key from {source} has {len(secret)} bytes; use at least "
                             f"{MIN_KEY_BYTES}, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`")
        self._secret = secret
        self.source = source

    def __repr__(self) -> str:
        return f"SigningKey(from {self.source})"

    def __reduce__(self):
        raise TypeError("a SigningKey never leaves the process that read it: verify manifests there")

    def sign(self, data: bytes) -> str:
        """The signature of ``data``: ``hmac-sha256:<hex>``."""
        return f"{SCHEME}:{hmac.new(self._secret, data, hashlib.sha256).hexdigest()}"

    def verifies(self, data: bytes, signature: str) -> bool:
        """True when ``signature`` is this key's signature of ``data`` (compared in constant time)."""
        return hmac.compare_digest(self.sign(data).encode(), signature.strip().encode())


def check(data: bytes, signature: str | None, key: SigningKey | None, required: bool, where: str) -> None:
    """Refuse a manifest (``SignatureError``) whose signature does not verify, or that is unsigned when required.

    A signed manifest read without a key is accepted unless signatures are
    required: then there is no way to check it, which is refused too.
    """
    if signature is None:
        if required:
            raise SignatureError(f"{where} is not signed and fleetscore.models.require-signature is true; "
                                 "retrain with a signing key configured")
        return
    if key is None:
        if required:
            raise SignatureError(f"{where} is signed but no signing key is configured to verify it "
                                 "(fleetscore.models.signing-key-env or signing-key-vault)")
        return
    if not key.verifies(data, signature):
        raise SignatureError(f"{where}: signature does not verify with the key from {key.source}; "
                             "the manifest was altered or signed with another key; refusing every model of it")


def load_key(env: str | None, vault_url: str | None, secret_name: str | None) -> SigningKey | None:
    """The configured signing key: the environment variable ``env`` if set, else a Key Vault secret, else ``None``."""
    if env and os.environ.get(env):
        return SigningKey(os.environ[env].encode(), f"environment variable {env}")
    if vault_url and secret_name:
        return SigningKey(_key_vault_secret(vault_url, secret_name).encode(),
                          f"Key Vault secret {secret_name!r} in {vault_url}")
    if vault_url or secret_name:
        raise ValueError("set both fleetscore.models.signing-key-vault and signing-key-secret, or neither")
    return None


def _key_vault_secret(vault_url: str, name: str) -> str:
    """A secret's value from Azure Key Vault, with the identity ``DefaultAzureCredential`` finds."""
    try:
        from azure.keyvault.secrets import SecretClient
    except ImportError:
        raise ImportError("reading the signing key from Key Vault needs azure-keyvault-secrets: "
                          "pip install azure-keyvault-secrets") from None
    from azure.identity import DefaultAzureCredential

    return SecretClient(vault_url=vault_url, credential=DefaultAzureCredential()).get_secret(name).value
