"""The parser's cached prefix path gives exactly what :data:`PREFIX` gives, for any line made of
the pieces a prefix has (real and near-miss stamps, hosts, tags, pids, queue ids, facilities)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.maillog import parse
from smtp_policy.maillog.parse import parse_line, parse_prefixed

STAMPS = st.sampled_from(
    [
        "Nov 28 12:19:08 ",
        "Dec  4 04:30:09 ",
        "Dec 4 04:30:09 ",
        "Dec  4 04:30:09",
        "nov 28 12:19:08 ",
        "Nov 28 12:19:8  ",
        "2024-04-25T22:25:16.352700+02:00 ",
        "<mail.info> ",
        "",
        "Nov 28 12:19:08 <mail.info> ",
    ]
)
PIECES = st.sampled_from(
    [
        "mx ",
        "mx",
        "host.example ",
        "<x> ",
        "a[b] ",
        "postfix/smtpd",
        "postfix/submission/smtpd",
        "postfix-out/smtp",
        "sm-mta",
        "sendmail",
        "cron",
        "relay/smtpd",
        "[5787]",
        "[x]",
        "[]",
        ": ",
        ":",
        "]: ",
        "NOQUEUE: ",
        "B935436B6B: ",
        "4PbMVG6Tmjz3tG3: ",
        "abc12345XY:",
        "connect from unknown[127.0.0.1]",
        "removed",
        "to=<a@b>, relay=none, delay=1, status=sent (250 ok)",
        " ",
        "\t",
        "é",
    ]
)


@settings(max_examples=1500, deadline=None)
@given(STAMPS, st.lists(PIECES, max_size=8))
def test_cached_prefix_is_the_full_prefix(stamp: str, pieces: list[str]) -> None:
    line = stamp + "".join(pieces)
    assert parse_line(line) == parse_prefixed(line.rstrip())
    assert parse_line(line) == parse_prefixed(line.rstrip())  # again, from the caches


def test_the_caches_are_bounded() -> None:
    for second in range(parse.PREFIX_CACHE + 10):
        minutes, seconds = divmod(second, 60)
        hours, minutes = divmod(minutes, 60)
        parse_line(
            f"Nov 28 {hours:02}:{minutes:02}:{seconds:02} mx postfix/qmgr[{second}]: removed"
        )
    assert len(parse._stamps) <= parse.PREFIX_CACHE
    assert len(parse._sources) <= parse.PREFIX_CACHE


def test_only_another_programs_line_has_no_shapes_to_try() -> None:
    # The cached path tells another program's line by its empty shape table, not by identity.
    for tag, program in [("postfix/smtpd", "smtpd"), ("postfix/odd", "odd"), ("sm-mta", "sm-mta")]:
        ours = parse._shapes_of(tag, program)
        assert ours is not None and ours[1]
    assert parse._shapes_of("cron", "cron") is None
    assert all(parse._DISPATCH.values())
    line = "Nov 28 12:19:08 mx cron[1]: (root) CMD (run-parts /etc/cron.hourly)"
    assert parse_line(line) is None
    assert parse_line(line) is None  # again, from the caches
