import pytest

from xrayvision.passwords import BadHash, hash_password, parse_hash, verify_password


def test_hash_verifies_and_is_salted():
    first, second = hash_password("s3cret", n=2**10), hash_password("s3cret", n=2**10)
    assert first != second
    assert verify_password("s3cret", first)
    assert verify_password("s3cret", second)
    assert not verify_password("S3cret", first)
    assert not verify_password("", first)


@pytest.mark.parametrize("stored", [
    "plaintext", "scrypt$abc$8$1$AAAA$AAAA", "scrypt$1000$8$1$AAAA$AAAA",
    "scrypt$1024$8$1$!!!$AAAA", "bcrypt$1024$8$1$AAAA$AAAA", "scrypt$1024$8$1$$",
])
def test_malformed_hashes_are_refused(stored):
    with pytest.raises(BadHash):
        parse_hash(stored)
    assert not verify_password("x", stored)
