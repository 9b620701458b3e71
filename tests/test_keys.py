"""Device tokens: the alphabet and length the device API accepts, and no modulo bias."""

import collections
import string

from connector.keys import TOKEN_ALPHABET, new_token
from provisioning.auth import TOKEN_RE


def test_tokens_are_40_alphanumerics_the_device_api_accepts():
    tokens = {new_token(40) for _ in range(1000)}
    assert len(tokens) == 1000
    for token in tokens:
        assert len(token) == 40 and set(token) <= set(string.ascii_letters + string.digits)
        assert TOKEN_RE.fullmatch(token)
    assert len(new_token(7)) == 7 and len(new_token(300)) == 300


def test_every_character_is_equally_likely():
    counts = collections.Counter("".join(new_token(40) for _ in range(20_000)))
    expected = 20_000 * 40 / len(TOKEN_ALPHABET)
    assert set(counts) == set(TOKEN_ALPHABET)
    # A modulo-biased draw (byte % 62) makes the first 8 characters 25 % more likely; the
    # spread allowed here is over 5 standard deviations of a fair draw.
    assert all(abs(count - expected) < 0.05 * expected for count in counts.values())
