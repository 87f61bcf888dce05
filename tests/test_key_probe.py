"""A key file whose private part is damaged but whose public half still matches the store's is refused:
the relay loads keys without OpenSSL's slow consistency check and proves each with a probe signature."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.core import dkimkeys
from relay.core.dkimkeys import KeyFileError, load_private_key, public_key_b64, write_private_key


def damaged_copy(key: rsa.RSAPrivateKey) -> bytes:
    """The same modulus and public exponent (so the same `p=`), with a wrong private exponent."""
    numbers = key.private_numbers()
    wrong = rsa.RSAPrivateNumbers(
        p=numbers.p, q=numbers.q, d=numbers.d + 2,
        dmp1=(numbers.d + 2) % (numbers.p - 1), dmq1=(numbers.d + 2) % (numbers.q - 1),
        iqmp=numbers.iqmp, public_numbers=numbers.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    return wrong.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())


def test_a_damaged_private_part_is_refused_and_a_sound_key_loads(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    key = dkimkeys.generate_private_key()
    relative = dkimkeys.key_path("acme", "s1")
    path = write_private_key(keys_dir, relative, key)
    assert public_key_b64(load_private_key(keys_dir, relative, public_key=public_key_b64(key))) == public_key_b64(key)

    path.write_bytes(damaged_copy(key))  # keeps its 0600 mode
    with pytest.raises(KeyFileError, match="damaged: its private part does not match its public part"):
        load_private_key(keys_dir, relative, public_key=public_key_b64(key))
