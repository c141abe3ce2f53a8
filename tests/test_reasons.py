"""Reasons are data: code decides on the ``Code``, the text is only what people read."""

from __future__ import annotations

from locpick.choose.score import Candidate, rank
from locpick.config.model import Config, Policy
from locpick.errors import LocationUnreachable, TransferError, UnsupportedLocation
from locpick.models import Image, Location, Probe
from locpick.reasons import Code, Reason, code_of

IMG = Image(id="i", size=1000, checksum="0" * 32)


def _one(cand: Candidate) -> tuple[str | None, str | None, bool]:
    (s,) = rank(IMG, [cand], Config())
    return s.reasons.error, s.reasons.policy, s.usable


def test_policy_key_follows_the_code_not_the_words() -> None:
    """A policy refusal fills ``policy``; a refusal that merely says "by policy" does not."""
    loc = Location("http://a/x")
    assert _one(Candidate(loc, unusable=Reason(Code.POLICY, "host 'a' forbidden"))) == (
        "host 'a' forbidden",
        "host 'a' forbidden",
        False,
    )
    refused = Reason(Code.REFUSED, "blocked by policy of the remote site")
    assert _one(Candidate(loc, unusable=refused)) == (str(refused), None, False)


def test_policy_from_config_is_a_policy_reason() -> None:
    """``[policy] forbid_schemes`` yields today's text in both ``error`` and ``policy``."""
    config = Config(policy=Policy(forbid_schemes=("http",)))
    (s,) = rank(IMG, [Candidate(Location("http://a/x"))], config)
    assert s.reasons.error == s.reasons.policy == "scheme 'http' forbidden by policy"


def test_failed_probe_text_is_kept() -> None:
    """A probe's HTTP status is typed on the probe; the reason text stays ``HTTP 401``."""
    probe = Probe(url="http://a/x", ok=False, error="HTTP 401", status=401)
    assert _one(Candidate(Location("http://a/x"), probe=probe)) == ("HTTP 401", None, False)


def test_code_of_reads_the_type() -> None:
    assert code_of(UnsupportedLocation("x: no")) is Code.UNSUPPORTED
    assert code_of(LocationUnreachable("x: HTTP 503", status=503)) is Code.UNREACHABLE
    assert code_of(TransferError("x: broke")) is Code.ERROR
    assert str(Reason(Code.NOT_PROBED, "not-probed: a fallback")) == "not-probed: a fallback"


def test_reason_of_strips_only_the_typed_location() -> None:
    """The location comes off by the exception's ``url``, not by the first ``": "``."""
    exc = UnsupportedLocation("s3://b/k: needs the s3 extra: pip install", url="s3://b/k")
    assert Reason.of(exc) == Reason(Code.UNSUPPORTED, "needs the s3 extra: pip install")
    assert Reason.of(ValueError("bad value: 3")) == Reason(Code.ERROR, "bad value: 3")
