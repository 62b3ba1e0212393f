"""Pure pieces: rate limiter, request schema validator, keys."""

from __future__ import annotations

import base58
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heaper_trio.errors import BadRequest
from heaper_trio.keys import KeyPair, b58decode_exact, canonical_public_key, verify_signature
from heaper_trio.services.ratelimit import AuthRateLimits, RateLimiter
from heaper_trio.web.schema import integer, obj, string, validate


def test_token_bucket_allows_burst_then_refills() -> None:
    rl = RateLimiter(60)  # one per second
    assert all(rl.hit("a", 0.0) is None for _ in range(60))
    assert rl.hit("a", 0.0) == 1
    assert rl.hit("b", 0.0) is None  # keys are independent
    assert rl.hit("a", 1.0) is None
    assert rl.hit("a", 1.0) == 1


def test_retry_after_counts_whole_seconds() -> None:
    rl = RateLimiter(1)  # one per minute
    assert rl.hit("a", 0.0) is None
    assert rl.hit("a", 0.0) == 60
    assert rl.hit("a", 30.0) == 30


def test_limiter_memory_is_bounded() -> None:
    rl = RateLimiter(10, max_keys=100)
    for i in range(1000):
        rl.hit(f"k{i}", 0.0)
    assert len(rl) == 100


def test_per_key_limit_is_a_fifth_from_each_address() -> None:
    limits = AuthRateLimits(10)
    assert [limits.check("addr", "key", 0.0) is None for i in range(3)] == [True, True, False]
    assert limits.check("addr", "other key", 0.0) is None  # the address still has budget
    assert AuthRateLimits(3).by_key.capacity == 1


def test_others_cannot_spend_a_victims_key_budget() -> None:
    """Keys are public: calls naming the victim's key from other addresses, however many,
    leave the victim's own address its whole allowance."""
    limits = AuthRateLimits(60)  # 12 per key and address
    for i in range(50):
        for _ in range(20):
            limits.check(f"10.0.0.{i}", "victim", 0.0)
    assert limits.check("10.0.0.7", "victim", 0.0) is not None  # the attackers are limited
    assert all(limits.check("192.168.1.5", "victim", 0.0) is None for _ in range(12))
    assert limits.check("192.168.1.5", "victim", 0.0) is not None  # and so is the victim
    assert limits.check("192.168.1.5", "victim", 5.0) is None  # after refilling a token


def test_the_address_limit_still_counts_every_key() -> None:
    limits = AuthRateLimits(10)
    assert all(limits.check("addr", f"key{i}", 0.0) is None for i in range(10))
    assert limits.check("addr", "fresh key", 0.0) is not None
    assert limits.check("addr", None, 0.0) is not None


@given(
    st.text(max_size=200), st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=40)
)
def test_a_long_or_odd_key_cannot_reach_anothers_bucket(key: str, address: str) -> None:
    limits = AuthRateLimits(5)  # one per key and address
    assert limits.check(address, key, 0.0) is None
    assert limits.check(address + "x", key, 0.0) is None
    assert limits.check(address, key + "\x00" + address, 0.0) is None or len(key) >= 64


SCHEMA = obj({"name": string(minLength=1, maxLength=5)}, {"n": integer(minimum=0)})


@pytest.mark.parametrize(
    "value,code",
    [
        ({}, "missing_field"),
        ({"name": "a", "x": 1}, "unknown_field"),
        ({"name": 1}, "invalid_type"),
        ({"name": "toolong"}, "invalid_value"),
        ({"name": "a", "n": -1}, "invalid_value"),
        ({"name": "a", "n": True}, "invalid_type"),
        ({"name": "a", "n": 1.5}, "invalid_type"),
        ("str", "invalid_type"),
    ],
)
def test_schema_rejects(value: object, code: str) -> None:
    with pytest.raises(BadRequest) as e:
        validate(value, SCHEMA)
    assert e.value.code == code


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_schema_validation_never_crashes(value: object) -> None:
    try:
        validate(value, SCHEMA)
    except BadRequest:
        pass


def test_keys_sign_and_verify() -> None:
    k = KeyPair.generate()
    sig = b58decode_exact(k.sign("hello"), 64, "signature")
    assert verify_signature(k.public_bytes, "hello", sig)
    assert not verify_signature(k.public_bytes, "hellO", sig)
    assert not verify_signature(KeyPair.generate().public_bytes, "hello", sig)
    assert canonical_public_key(k.public_key) == k.public_key


@given(st.text(max_size=100))
def test_public_key_parsing_never_crashes(text: str) -> None:
    try:
        raw = canonical_public_key(text)
    except BadRequest as e:
        assert e.code == "invalid_public_key" and e.status == 400
    else:
        assert len(base58.b58decode(raw)) == 32


def test_key_file_round_trip_and_no_overwrite(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "k"
    k = KeyPair.generate()
    k.save(path)
    assert KeyPair.load(path).public_key == k.public_key
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        KeyPair.generate().save(path)
    assert KeyPair.load(path).public_key == k.public_key


def test_verified_token_cache_still_enforces_expiry_and_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from heaper_trio.errors import Unauthorized
    from heaper_trio.services import tokens as tokens_mod

    svc = tokens_mod.TokenService(KeyPair.generate(), access_ttl=60, refresh_ttl=3600)
    now = time.time()
    pair = svc.issue("u1", 0, now)
    assert svc.decode(pair.access, "access").user_id == "u1"  # verified, now cached
    with pytest.raises(Unauthorized) as e:
        svc.decode(pair.access, "refresh")
    assert e.value.code == "token_wrong_type"

    class Later:
        @staticmethod
        def time() -> float:
            return now + 60 + tokens_mod.LEEWAY_S + 1

    monkeypatch.setattr(tokens_mod, "time", Later)
    with pytest.raises(Unauthorized) as e:
        svc.decode(pair.access, "access")
    assert e.value.code == "token_expired"
    assert svc.decode(pair.refresh, "refresh").typ == "refresh"  # still valid: longer ttl


def test_verified_token_cache_is_bounded() -> None:
    import time

    from heaper_trio.services import tokens as tokens_mod

    svc = tokens_mod.TokenService(KeyPair.generate(), access_ttl=60, refresh_ttl=3600)
    for i in range(tokens_mod.VERIFIED_CACHE_SIZE + 50):
        svc.decode(svc.issue(f"u{i}", 0, time.time()).access, "access")
    assert len(svc._verified) == tokens_mod.VERIFIED_CACHE_SIZE


def test_document_cache_is_bounded_and_owned_while_in_use() -> None:
    from heaper_trio import crdt
    from heaper_trio.services.doc_cache import DocumentBase, DocumentCache

    cache = DocumentCache(max_entries=3, max_bytes=100)

    def base(size: int, heap: str = "h") -> DocumentBase:
        return DocumentBase(crdt.BlockDocument(), heap, 1, 1, 1, size)

    for i in range(5):
        cache.put(f"b{i}", base(10))
    assert len(cache) == 3 and cache.take("b0") is None  # oldest went first
    taken = cache.take("b4")
    assert taken is not None and cache.take("b4") is None  # taken out while in use
    cache.put("big", base(95))
    assert len(cache) == 1  # the byte bound pushed the others out
    cache.put("x", base(1, heap="other"))
    cache.evict_heap("h")
    assert cache.take("big") is None and cache.take("x") is not None
