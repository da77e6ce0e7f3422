"""Manifest signing keys: from the environment or Key Vault, never shown, never pickled."""

import pickle
import sys
import types

import pytest

from scoring import signing
from scoring.signing import SignatureError, SigningKey, check, load_key

SECRET = "0123456789abcdef0123456789abcdef-not-a-real-key"


def test_a_key_from_the_environment_signs_and_verifies(monkeypatch):
    monkeypatch.setenv("TEST_SIGNING_KEY", SECRET)
    key = load_key("TEST_SIGNING_KEY", None, None)
    signature = key.sign(b"manifest")
    assert signature.startswith("hmac-sha256:") and key.verifies(b"manifest", signature)
    assert not key.verifies(b"manifest!", signature)
    assert SECRET not in repr(key) and "TEST_SIGNING_KEY" in repr(key)
    with pytest.raises(TypeError, match="never leaves"):
        pickle.dumps(key)


def test_no_key_configured_is_none_and_short_or_half_configured_keys_are_refused(monkeypatch):
    monkeypatch.delenv("TEST_SIGNING_KEY", raising=False)
    assert load_key("TEST_SIGNING_KEY", None, None) is None
    monkeypatch.setenv("TEST_SIGNING_KEY", "short")
    with pytest.raises(ValueError, match="has 5 bytes; use at least 32"):
        load_key("TEST_SIGNING_KEY", None, None)
    with pytest.raises(ValueError, match="signing-key-vault and signing-key-secret"):
        load_key(None, "https://fleet.vault.azure.net", None)


def test_a_key_vault_secret_is_read_through_the_sdk_with_the_default_credential(monkeypatch):
    """Up to the SDK boundary: ``SecretClient`` stands in for azure-keyvault-secrets, which is not installed."""
    calls = []

    class SecretClient:
        def __init__(self, vault_url, credential):
            calls.append((vault_url, type(credential).__name__))

        def get_secret(self, name):
            calls.append(name)
            return types.SimpleNamespace(value=SECRET)

    module = types.ModuleType("azure.keyvault.secrets")
    module.SecretClient = SecretClient
    monkeypatch.setitem(sys.modules, "azure.keyvault", types.ModuleType("azure.keyvault"))
    monkeypatch.setitem(sys.modules, "azure.keyvault.secrets", module)
    key = load_key("UNSET_VARIABLE", "https://fleet.vault.azure.net", "manifest-key")
    assert calls == [("https://fleet.vault.azure.net", "DefaultAzureCredential"), "manifest-key"]
    assert key.verifies(b"m", SigningKey(SECRET.encode(), "same").sign(b"m"))
    assert SECRET not in repr(key) and "manifest-key" in repr(key)


def test_without_the_key_vault_sdk_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "azure.keyvault.secrets", None)
    with pytest.raises(ImportError, match="pip install azure-keyvault-secrets"):
        signing._key_vault_secret("https://fleet.vault.azure.net", "manifest-key")


KEY = SigningKey(SECRET.encode(), "test")
GOOD = KEY.sign(b"data")


def test_check_accepts_a_verified_signature_and_what_is_not_required():
    check(b"data", GOOD, KEY, True, "m")
    check(b"data", None, KEY, False, "m")  # unsigned, signatures not required
    check(b"data", GOOD, None, False, "m")  # signed, no key to check with, not required


@pytest.mark.parametrize("signature, key, required, reason", [
    (KEY.sign(b"other"), KEY, False, "does not verify"),
    (None, KEY, True, "not signed"),
    (GOOD, None, True, "no signing key is configured"),
], ids=["altered", "unsigned", "unverifiable"])
def test_check_refuses_what_must_not_be_used(signature, key, required, reason):
    with pytest.raises(SignatureError, match=reason):
        check(b"data", signature, key, required, "models/v=1/manifest.json")
