"""The Postfix 3.x line shapes: one small regex, builder and real sample per line Postfix logs.

Each builder turns a body match (from the end of ``parse.PREFIX``) into a :class:`LogRecord`;
:data:`BY_PROGRAM` lists the shapes each program (the syslog tag's last part) may log, most
frequent first. Patterns use possessive or bounded groups, so no line can make a match
backtrack for long.

Replies that Postfix logs before ``; from=<...> to=<...> proto=... helo=<...>`` echo what the
client sent, so they may hold text shaped like those keys. The attributes are read strictly,
the way Postfix writes them: addresses in external form (a local part with specials is quoted,
``"`` and ``\\`` escaped inside, and a domain has no specials), a HELO with Postfix's ``?`` for
space, ``<``, ``>``, ``"``, ``;`` and ``@``. Of the places where such a run starts and reaches
the end of the line, the last (rightmost) is Postfix's own: a look-alike in the reply is to its
left, and one inside a quoted address cannot close that address's quotes.
"""

from __future__ import annotations

import re
from typing import Any, Final

from smtp_policy.core.rewrite import split_dsn_text
from smtp_policy.core.stages import Stage
from smtp_policy.maillog._shapes import (
    CODES,
    Head,
    Shape,
    command_stage,
    reply_codes,
    shape,
)
from smtp_policy.maillog.record import Direction, LogRecord, new_record

__all__ = ["ANY_PROGRAM", "BY_PROGRAM", "POSTFIX_SHAPES"]

#: ``name[addr]`` with an optional ``:port`` (Postfix clients).
_CLIENT: Final = r"(?P<name>[^\s\[\]]+)\[(?P<addr>[^\]\s]*)\](?::(?P<port>\d+))?"
#: The code of a remote reply in a delivery status text.
_REMOTE_CODE: Final = re.compile(
    r"(?:host \S+ (?:said|refused to talk to me): )?(?P<code>[2-5]\d\d)(?:[ \-]|\Z)"
)
#: One address as Postfix logs it (``info_log_addr_form = external``): a quoted local part
#: (with ``\\``-escapes) or one without specials, then ``@domain``; ``<>`` is the null sender.
_ADDRESS: Final = r'(?:"(?:[^"\\]|\\.)*+"|[^\s"\\<>@]*+)(?:@[^\s"\\<>@]*+)?'
#: Postfix's trailing ``from=<s> to=<r> proto=P helo=<h>`` after ``;`` (postscreen separates
#: the keys with commas), each key optional; Postfix neuters a HELO's specials to ``?``.
_ATTRIBUTES: Final = (
    r";(?= (?:from|to|proto|helo)=)"
    rf"(?: from=<(?P<sender>{_ADDRESS})>)?"
    rf"(?:,? to=<(?P<rcpt>{_ADDRESS})>)?"
    r"(?:,? proto=(?P<proto>[^\s,<>]++))?"
    r"(?:,? helo=<?(?P<helo>[^\s<>]*+)>?)?"
)
_TAIL: Final = re.compile(_ATTRIBUTES + r"\Z")


def _last_tail(line: str, start: int) -> re.Match[str] | None:
    """The trailing attributes Postfix wrote: the rightmost ``;`` from which they parse strictly
    to the end of the line (see the module's docstring), or None."""
    at = len(line)
    while (at := line.rfind("; ", start, at)) >= 0:
        tail = _TAIL.match(line, at)
        if tail is not None:
            return tail
    return None


_COUNT: Final = re.compile(r"(\w+)=(\S+)")


def _pairs(text: str, sep: str) -> tuple[tuple[str, str], ...]:
    """``a=1<sep>b=2`` as ``(("a", "1"), ("b", "2"))``; words without ``=`` are skipped."""
    out = []
    for item in text.split(sep):
        key, eq, value = item.strip().partition("=")
        if eq:
            out.append((key, value))
    return tuple(out)


# -- Postfix: smtpd, postscreen, cleanup: replies our MTA gave a client ---------------------


def _reject(
    kind: str,
    m: re.Match[str],
    line: str,
    head: Head,
    direction: Direction | None = "upstream",
    **values: Any,
) -> LogRecord:
    """Common part of smtpd/postscreen/milter rejects: reply, codes and the trailing keys."""
    start = m.end()
    tail = _last_tail(line, start)
    end = tail.start() if tail is not None else len(line)
    code = m["code"]
    sender = rcpt = proto = helo = None
    if tail is not None:
        sender, rcpt, proto, helo = tail.groups()
    return new_record(
        kind,
        *head,
        direction=direction,
        stage=command_stage(m["stage"]),
        action=m["action"],
        code=int(code) if code else None,
        enhanced=m["esc"],
        reply=line[start:end],
        sender=sender,
        recipient=rcpt or None,
        helo=helo or None,
        proto=proto or None,
        **values,
    )


@shape(
    "smtpd_reject",
    r"(?P<action>reject|reject_warning|hold|discard): (?P<stage>[A-Z][A-Z-]*+) from "
    + _CLIENT
    + r": (?="
    + CODES
    + ")",
    "Jul 12 07:47:48 saturn postfix/smtpd[8738]: NOQUEUE: reject: RCPT from "
    "1-2-3-4-example.com[1.2.3.4]: 554 5.7.1 <smtp@example.com>: Relay access denied; "
    "from=<john@example.com> to=<smtp@example.org> proto=SMTP helo=<198.51.100.17>",
)
def _smtpd_reject(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return _reject("smtpd_reject", m, line, head, client_name=m["name"], client_addr=m["addr"])


@shape(
    "smtpd_action",
    r"(?P<action>warn|info|filter|redirect|permit|bcc|prepend): (?P<stage>[A-Z][A-Z-]*+) from "
    + _CLIENT
    + r": (?="
    + CODES
    + ")",
    "Jan 10 10:01:02 mx postfix/smtpd[1234]: NOQUEUE: filter: RCPT from mail.example.net"
    "[192.0.2.7]: <a@example.net>: Sender address triggers FILTER smtp:[127.0.0.1]:10025; "
    "from=<a@example.net> to=<b@example.org> proto=ESMTP helo=<mail.example.net>",
)
def _smtpd_action(m: re.Match[str], line: str, head: Head) -> LogRecord:
    """Access-table actions that do not refuse anything (warn, info, filter...)."""
    return _reject("noise", m, line, head, None, client_name=m["name"], client_addr=m["addr"])


@shape(
    "milter_reject",
    r"(?P<action>milter-(?:reject|hold|discard)): (?P<stage>[A-Z][A-Z-]*+) from "
    + _CLIENT
    + r": (?="
    + CODES
    + ")",
    "Jan 19 14:42:50 SYSTEMNAME postfix/cleanup[3101]: 40C12F39F: milter-reject: END-OF-MESSAGE "
    "from 45.Red-80-39-23.staticIP.rima-tde.net[80.39.23.45]: 5.7.1 Delivery not authorized, "
    "message refused!; from=<PierceJeremiah1411@example.com> to=<nonpollutingja@example.com> "
    "proto=ESMTP helo=<45.Red-80-39-23.staticIP.rima-tde.net>",
)
def _milter_reject(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return _reject("milter_reject", m, line, head, client_name=m["name"], client_addr=m["addr"])


@shape(
    "proxy_reject",
    r"(?P<action>proxy-reject): (?P<stage>[A-Z][A-Z-]*+): (?=" + CODES + ")",
    "Mar  2 10:15:01 mx postfix/smtpd[4321]: 3F2A1C0D9: proxy-reject: END-OF-MESSAGE: "
    "554 5.7.0 Reject, id=12345-01 - spam; from=<a@example.net> to=<b@example.org> "
    "proto=ESMTP helo=<mail.example.net>",
)
def _proxy_reject(m: re.Match[str], line: str, head: Head) -> LogRecord:
    """A before-queue content filter refused the message (reply relayed to the client)."""
    return _reject("smtpd_reject", m, line, head)


@shape(
    "postscreen_reject",
    r"(?P<action>reject): (?P<stage>[A-Z][A-Z-]*+) from \[(?P<addr>[^\]\s]*)\]:(?P<port>\d+): (?="
    + CODES
    + ")",
    "May  5 15:51:11 xxx postfix/postscreen[1148]: NOQUEUE: reject: RCPT from "
    "[216.245.194.173]:60591: 550 5.7.1 Service unavailable; client [216.245.194.173] blocked "
    "using rbl.example.com; from=<spammer@example.com>, to=<goodguy@example.com>, proto=ESMTP, "
    "helo=<badguy.example.com>",
)
def _postscreen_reject(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return _reject("postscreen_reject", m, line, head, client_addr=m["addr"])


#: ``header_checks``/``body_checks``: `` from name[addr];`` then the attributes (none may be
#: known), then ``: reply`` when the action has a text.
_CHECK_TAIL: Final = re.compile(
    r" from (?P<name>[^\s\[\];]+)(?:\[(?P<addr>[^\]\s]*)\](?::\d+)?)?"
    + _ATTRIBUTES.replace("(?= (?:from|to|proto|helo)=)", "")
    + r"(?:: (?P<reply>.*))?\Z"
)


def _check_tail(line: str, start: int) -> re.Match[str] | None:
    """Where a header/body check line's attributes are: the leftmost place they parse strictly
    whose reply has no attribute key in it (else the rightmost place they parse).

    The checked content (the client's header, before them) may hold a whole look-alike, and a
    quoted address in them another; either way the look-alike's ``: reply`` would run over
    Postfix's own later keys, while Postfix's reply is the admin's text after all of them.
    """
    found: list[re.Match[str]] = []
    at = len(line)
    while (at := line.rfind(" from ", start, at)) >= 0:
        tail = _CHECK_TAIL.match(line, at)
        if tail is not None:
            found.append(tail)
    clean = [t for t in found if t["reply"] is None or not _KEYS_IN_REPLY.search(t["reply"])]
    if clean:
        return clean[-1]
    return found[0] if found else None


_KEYS_IN_REPLY: Final = re.compile(r"[>\s],? (?:from=<|to=<|proto=|helo=<)")


_CHECK_REFUSALS: Final = frozenset({"reject", "hold", "discard"})


@shape(
    "cleanup_check",
    r"(?P<action>(?:milter-(?:header|body)-)?(?:reject|warning|hold|discard|info|replace"
    r"|redirect|filter|prepend|bcc|strip)): "
    r"(?P<what>header|body|mime-header|nested-header) ",
    "Feb  3 11:22:33 mx postfix/cleanup[2211]: 5C1D22A0B3: reject: header Subject: "
    "You won! from mail.example.net[192.0.2.8]; from=<a@example.net> to=<b@example.org> "
    "proto=ESMTP helo=<mail.example.net>: 5.7.1 Message content rejected",
)
def _cleanup_check(m: re.Match[str], line: str, head: Head) -> LogRecord:
    """``header_checks``/``body_checks`` results; reject, hold and discard refuse the message."""
    action = m["action"]
    tail = _check_tail(line, m.end())
    end = tail.start() if tail is not None else len(line)
    extra: tuple[tuple[str, str], ...] = ((m["what"], line[m.end() : end]),)
    if tail is None:
        return new_record("noise", *head, action=action, extra=extra)
    reply = tail["reply"]
    refusal = action.rpartition("-")[2] in _CHECK_REFUSALS
    code, esc = reply_codes(line, tail.start("reply")) if reply and refusal else (None, None)
    if reply and not refusal:
        extra, reply = (*extra, ("text", reply)), None
    return new_record(
        "smtpd_reject" if refusal else "noise",
        *head,
        direction="upstream" if refusal else None,
        stage=Stage.EOM,
        action=action,
        code=code,
        enhanced=esc,
        reply=reply,
        sender=tail["sender"],
        recipient=tail["rcpt"] or None,
        client_name=tail["name"],
        client_addr=tail["addr"],
        helo=tail["helo"] or None,
        proto=tail["proto"] or None,
        extra=extra,
    )


@shape(
    "client",
    r"client=" + _CLIENT + r"(?:, (?P<more>.*))?\Z",
    "Oct 30 13:19:26 mailgw-out1 postfix/smtpd[27530]: EB4B2C19E2: client=xxx[1.2.3.4], "
    "sasl_method=PLAIN, sasl_username=user@domain",
)
def _client(m: re.Match[str], line: str, head: Head) -> LogRecord:
    more = m["more"]
    return new_record(
        "client",
        *head,
        client_name=m["name"],
        client_addr=m["addr"],
        extra=_pairs(more, ", ") if more else (),
    )


@shape(
    "connect",
    r"connect from " + _CLIENT + r"\Z",
    "Nov 28 12:31:59 vm postfix/smtpd[19342]: connect from unknown[127.0.0.1]",
)
def _connect(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("connect", *head, client_name=m["name"], client_addr=m["addr"])


@shape(
    "disconnect",
    r"disconnect from " + _CLIENT + r"(?P<counts>(?: \w+=\d+(?:/\d+)?)*)\Z",
    "Nov 28 12:31:59 vm postfix/smtpd[19342]: disconnect from unknown[127.0.0.1] ehlo=1 mail=1 "
    "rcpt=0/1 rset=1 quit=1 commands=4/5",
)
def _disconnect(m: re.Match[str], line: str, head: Head) -> LogRecord:
    counts = m["counts"]
    return new_record(
        "disconnect",
        *head,
        client_name=m["name"],
        client_addr=m["addr"],
        extra=tuple(_COUNT.findall(counts)) if counts else (),
    )


@shape(
    "lost_connection",
    r"lost connection after (?P<stage>[A-Z][A-Z-]*+)(?: \((?P<bytes>\d+) bytes\))? from "
    + _CLIENT
    + r"\Z",
    "Feb 18 09:50:05 xxx postfix/smtpd[42]: lost connection after DATA from "
    "good-host.example.com[192.0.2.10]",
)
def _lost_connection(m: re.Match[str], line: str, head: Head) -> LogRecord:
    size = m["bytes"]
    return new_record(
        "lost_connection",
        *head,
        direction="upstream",
        stage=command_stage(m["stage"]),
        client_name=m["name"],
        client_addr=m["addr"],
        extra=(("bytes", size),) if size else (),
    )


@shape(
    "timeout",
    r"timeout after (?P<stage>[A-Z][A-Z-]*+)(?: \((?P<bytes>\d+) bytes\))? from " + _CLIENT + r"\Z",
    "Mar 15 20:42:13 helga postfix/submission/smtpd[482723]: timeout after EHLO from "
    "200123004113.gtdperu.pe[200.123.4.113]",
)
def _timeout(m: re.Match[str], line: str, head: Head) -> LogRecord:
    size = m["bytes"]
    return new_record(
        "timeout",
        *head,
        direction="upstream",
        stage=command_stage(m["stage"]),
        client_name=m["name"],
        client_addr=m["addr"],
        extra=(("bytes", size),) if size else (),
    )


@shape(
    "smtpd_noise",
    r"(?:improper command pipelining|too many errors) after (?P<stage>[A-Z][A-Z-]*+) from ",
    "Jun  3 06:25:43 srv postfix/smtpd[29306]: too many errors after RCPT from "
    "example.com[192.0.2.11]",
)
def _smtpd_noise(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("noise", *head, stage=command_stage(m["stage"]))


# -- postscreen -----------------------------------------------------------------------------


@shape(
    "postscreen_connect",
    r"CONNECT from \[(?P<addr>[^\]\s]*)\]:(?P<port>\d+) to \[(?P<local>[^\]\s]*)\]:(?P<lport>\d+)",
    "Mar 14 00:00:31 helga postfix/postscreen[3163107]: CONNECT from [185.48.118.128]:36942 to "
    "[188.34.187.246]:25",
)
def _postscreen_connect(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("connect", *head, client_addr=m["addr"], extra=(("port", m["port"]),))


@shape(
    "postscreen_disconnect",
    r"DISCONNECT \[(?P<addr>[^\]\s]*)\]:(?P<port>\d+)\Z",
    "Mar 14 00:00:33 helga postfix/postscreen[3163107]: DISCONNECT [185.48.118.128]:36942",
)
def _postscreen_disconnect(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("disconnect", *head, client_addr=m["addr"], extra=(("port", m["port"]),))


@shape(
    "postscreen_hangup",
    r"HANGUP after (?P<after>[\d.]+) from \[(?P<addr>[^\]\s]*)\]:(?P<port>\d+)"
    r"(?: in (?P<where>.*))?\Z",
    "Dec 24 00:54:36 xxx postfix/postscreen[22515]: HANGUP after 16 from [192.0.2.3]:48119 in "
    "tests after SMTP handshake",
)
def _postscreen_hangup(m: re.Match[str], line: str, head: Head) -> LogRecord:
    where = m["where"]
    return new_record(
        "lost_connection",
        *head,
        direction="upstream",
        client_addr=m["addr"],
        extra=(("after", m["after"]), ("in", where)) if where else (("after", m["after"]),),
    )


@shape(
    "postscreen_noise",
    r"(?:PASS (?:NEW|OLD)|(?:WHITE|ALLOW|BLACK|DENY)LISTED|(?:WHITE|ALLOW)LIST VETO|PREGREET \d+"
    r"|DNSBL rank|COMMAND (?:TIME LIMIT|PIPELINING|COUNT LIMIT|LENGTH LIMIT)|NON-SMTP COMMAND"
    r"|BARE NEWLINE|cache \S+ full cleanup)\b",
    "Dec 23 19:39:13 xxx postfix/postscreen[21057]: PREGREET 14 after 0.08 from "
    "[192.0.2.2]:59415: EHLO ylmf-pc\\r\\n",
)
def _postscreen_noise(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("noise", *head)


# -- cleanup, qmgr, pickup, postsuper, bounce: the queue ------------------------------------


@shape(
    "message_id",
    r"(?P<resent>resent-)?message-id=(?P<mid>.*)\Z",
    "Nov 28 12:31:59 vm postfix/cleanup[19346]: B935436B6B: "
    "message-id=<20261128123159.B935436B6B@vm>",
)
def _message_id(m: re.Match[str], line: str, head: Head) -> LogRecord:
    mid = m["mid"]
    if mid.startswith("<") and mid.endswith(">"):
        mid = mid[1:-1]
    if m["resent"]:
        return new_record("message_id", *head, extra=(("resent_message_id", mid),))
    return new_record("message_id", *head, message_id=mid or None)


@shape(
    "queued",
    r"from=<(?P<sender>[^>]*+)>, size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+) \(queue active\)\Z",
    "Nov 28 12:31:59 vm postfix/qmgr[19298]: B935436B6B: from=<sender1@sender.test>, size=373, "
    "nrcpt=1 (queue active)",
)
def _queued(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record(
        "queued",
        *head,
        sender=m["sender"],
        extra=(("size", m["size"]), ("nrcpt", m["nrcpt"])),
    )


@shape(
    "expired",
    r"from=<(?P<sender>[^>]*+)>, status=(?P<status>expired|force-expired), returned to sender\Z",
    "Dec 28 13:39:28 mx postfix/qmgr[22753]: C93CEB08A046: from=<ina@somedomain.com>, "
    "status=expired, returned to sender",
)
def _expired(m: re.Match[str], line: str, head: Head) -> LogRecord:
    status = m["status"]
    return new_record(
        "expired",
        *head,
        direction="downstream",
        status="expired",
        sender=m["sender"],
        reply="returned to sender",
        extra=(("expiry", status),) if status != "expired" else (),
    )


@shape(
    "removed",
    r"removed\Z",
    "Nov 28 12:31:59 vm postfix/qmgr[19298]: B935436B6B: removed",
)
def _removed(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("removed", *head)


@shape(
    "queue_noise",
    r"(?:skipped, still being delivered|(?:Deleted|Requeued|Released from hold|Placed on hold):"
    r" \d+ messages?)\Z",
    "Feb  9 08:00:01 mx postfix/postsuper[5555]: Deleted: 3 messages",
)
def _queue_noise(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("noise", *head)


@shape(
    "pickup",
    r"uid=(?P<uid>\d+) from=<(?P<sender>[^>]*+)>\Z",
    "Mar 14 06:27:34 helga postfix/pickup[320974]: 4PbMVG6Tmjz3tG3: uid=0 from=<root>",
)
def _pickup(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("pickup", *head, sender=m["sender"], extra=(("uid", m["uid"]),))


@shape(
    "bounce_notice",
    r"(?P<notice>(?:sender|postmaster) (?:non-delivery|delay|delivery status) notification): "
    r"(?P<new>\w+)\Z",
    "Dec 28 13:39:28 mx postfix/bounce[19155]: C93CEB08A046: sender non-delivery notification: "
    "B1B894562003",
)
def _bounce_notice(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record(
        "bounce_notice",
        *head,
        direction="downstream",
        new_queue_id=m["new"],
        extra=(("notice", m["notice"]),),
    )


# -- smtp, lmtp, local, virtual, pipe, error, discard: deliveries -----------------------------


@shape(
    "delivery",
    r"to=<(?P<rcpt>[^>]*+)>, (?:orig_to=<(?P<orig>[^>]*+)>, )?relay=(?P<relay>[^,\s]*+), "
    r"(?:conn_use=(?P<conn_use>\d+), )?delay=(?P<delay>[\d.]+), "
    r"(?:delays=(?P<delays>[\d.]+(?:/[\d.]+)*), )?(?:dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), )?"
    r"status=(?P<status>[\w-]+)(?: \((?P<text>.*))?\Z",
    "Nov  3 16:04:31 myname postfix/smtp[30840]: 19B6B2900FE: to=<wietse@test.example.com>, "
    "orig_to=<wietse@test>, relay=mail.example.com[1.2.3.4], conn_use=2, delay=0.22, "
    "delays=0.04/0.01/0.05/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
)
def _delivery(m: re.Match[str], line: str, head: Head) -> LogRecord:
    rcpt, orig, relay, conn_use, delay, delays, dsn, status, text = m.groups()
    code = None
    extra: tuple[tuple[str, str], ...] = ()
    if text is not None:
        if text.endswith(")"):
            text = text[:-1]
        filtered = split_dsn_text(text)
        if filtered is not None:  # our DSN filter's words, then the reason Postfix gave
            friendly, text = filtered
            extra = (("friendly", friendly),)
        code = _remote_code(text)
        extra += _in_reply_to(text)
    if conn_use:
        extra = (("conn_use", conn_use), *extra)
    return new_record(
        "delivery",
        *head,
        direction="downstream",
        code=code,
        enhanced=dsn,
        reply=text,
        status=status,
        recipient=rcpt or None,
        orig_recipient=orig,
        relay=relay,
        delay=float(delay),
        delays=tuple(map(float, delays.split("/"))) if delays else None,
        dsn=dsn,
        extra=extra,
    )


def _remote_code(text: str) -> int | None:
    """The code of the remote reply in a delivery text: ``250 ...`` or ``host x said: 550 ...``.

    The common case (a text starting with the code) is handled without a regex.
    """
    head = text[:4]
    if len(head) == 4 and head[:3].isdigit() and head[3] in " -" and head[0] in "2345":
        return int(head[:3])
    if not text.startswith("host "):
        return None
    said = _REMOTE_CODE.match(text)
    return int(said["code"]) if said is not None else None


def _in_reply_to(text: str) -> tuple[tuple[str, str], ...]:
    """``(("in_reply_to", "RCPT TO"),)`` for texts ending ``(in reply to RCPT TO command)``."""
    if not text.endswith(" command)"):
        return ()
    start = text.rfind("(in reply to ")
    if start < 0:
        return ()
    return (("in_reply_to", text[start + 13 : -9]),)


@shape(
    "attempt",
    r"host (?P<relay>\S+) (?:said|refused to talk to me): " + CODES,
    "Dec 29 02:54:09 mail postfix/smtp[7648]: 732BB407C3: host mail.domain.com[1.1.1.1] said: "
    "451 DT:SPM 163 mx13,P8CowECpNVM_oEVaenoEAQ--.23796S3 1514512449, please try again 15min "
    "later (in reply to end of DATA command)",
)
def _attempt(m: re.Match[str], line: str, head: Head) -> LogRecord:
    """A non-final delivery attempt: another MX (or a later retry) is still to come."""
    code = m["code"]
    text = line[m.start() :]
    return new_record(
        "attempt",
        *head,
        direction="downstream",
        code=int(code) if code else None,
        enhanced=m["esc"],
        reply=text,
        relay=m["relay"],
        extra=_in_reply_to(text),
    )


@shape(
    "attempt_lost",
    r"(?:lost connection|conversation) with (?P<relay>\S+) (?:timed out )?while ",
    "Nov 20 23:33:33 mail postfix/smtp[21530]: 84FC51F660C: lost connection with "
    "etb-3.mail.tiscali.it[213.205.33.64] while sending end of data -- message may be sent more "
    "than once",
)
def _attempt_lost(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record(
        "attempt",
        *head,
        direction="downstream",
        reply=line[m.start() :],
        relay=m["relay"],
    )


@shape(
    "connection_error",
    r"connect to (?P<relay>\S+?): (?P<text>.+)\Z",
    "Dec 27 02:38:54 mx postfix/smtp[24234]: connect to arobor.ru[178.210.73.19]:25: "
    "Connection timed out",
)
def _connection_error(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record(
        "connection_error",
        *head,
        direction="downstream",
        reply=m["text"],
        relay=m["relay"],
    )


@shape(
    "smtp_noise",
    r"(?:enabling PIX workarounds|Host offered STARTTLS|(?:server|client) certificate "
    r"verification failed)\b",
    "Apr  4 09:10:11 mx postfix/smtp[777]: 4A1B2C3D4E: enabling PIX workarounds: "
    "disable_esmtp delay_dotcrlf for mail.example.com[192.0.2.9]:25",
)
def _smtp_noise(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("noise", *head)


# -- every Postfix program ---------------------------------------------------------------------


@shape(
    "warning",
    # (Sendmail's startup "error: safesasl(...)" is sendmail_noise)
    r"(?P<level>warning|error|fatal|panic): "
    r"(?!(?:header|body|mime-header|nested-header) |safesasl\()"
    r"(?:milter (?P<milter>\S+): )?",
    "Feb 25 15:57:27 mframe1 postfix/smtpd[25140]: warning: Illegal address syntax from "
    "localhost[127.0.0.1] in RCPT command: <name@62.157.140.137>",
)
def _warning(m: re.Match[str], line: str, head: Head) -> LogRecord:
    level, milter = m["level"], m["milter"]
    extra = [("level", level), ("message", line[m.end() :])]
    if milter:
        extra.append(("milter", milter))
    return new_record("warning", *head, extra=tuple(extra))


@shape(
    "tls_noise",
    r"(?:(?:Anonymous|Untrusted|Trusted|Verified) TLS connection established (?:to|from) "
    r"|setting up TLS connection (?:to|from) |SSL_(?:accept|connect) error (?:to|from) "
    r"|TLS SNI )",
    "Jul 24 04:38:17 mail postfix/smtp[30582]: Verified TLS connection established to "
    "gmail-smtp-in.l.google.com[108.177.14.26]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 "
    "(256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256",
)
def _tls_noise(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("noise", *head)


@shape(
    "daemon_noise",
    r"(?:daemon started -- |terminating on signal |reload -- |(?:starting|stopping|refreshing"
    r"|reloading) the Postfix mail system|Postfix is (?:running|using) |See https?://"
    r"|using backwards-compatible default setting|table \S+ has changed -- restarting"
    r"|statistics: |addr \S+ listed by domain )",
    "Oct 25 17:36:47 vps331845 postfix[6084]: Postfix is running with backwards-compatible "
    "default setting",
)
def _daemon_noise(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record("noise", *head)


# -- Tables ------------------------------------------------------------------------------------

_ANY_POSTFIX: Final = (_warning, _daemon_noise, _tls_noise)
_SMTPD: Final = (
    _connect,
    _disconnect,
    _client,
    _smtpd_reject,
    _milter_reject,
    _lost_connection,
    _timeout,
    _smtpd_noise,
    _smtpd_action,
    _proxy_reject,
    *_ANY_POSTFIX,
)
_POSTSCREEN: Final = (
    _postscreen_connect,
    _postscreen_disconnect,
    _postscreen_reject,
    _postscreen_hangup,
    _postscreen_noise,
    *_ANY_POSTFIX,
)
_CLEANUP: Final = (_message_id, _milter_reject, _cleanup_check, *_ANY_POSTFIX)
_QMGR: Final = (_queued, _removed, _expired, _queue_noise, *_ANY_POSTFIX)
_SMTP: Final = (_delivery, _connection_error, _attempt, _attempt_lost, _smtp_noise, *_ANY_POSTFIX)
_LOCAL: Final = (_delivery, *_ANY_POSTFIX)
_BOUNCE: Final = (_bounce_notice, *_ANY_POSTFIX)

#: Postfix program (the last part of the syslog tag) -> the shapes to try, most frequent first.
BY_PROGRAM: Final[dict[str, tuple[Shape, ...]]] = {
    "smtpd": _SMTPD,
    "postscreen": _POSTSCREEN,
    "cleanup": _CLEANUP,
    "qmgr": _QMGR,
    "nqmgr": _QMGR,
    "oqmgr": _QMGR,
    "smtp": _SMTP,
    "lmtp": _SMTP,
    "local": _LOCAL,
    "virtual": _LOCAL,
    "pipe": _LOCAL,
    "error": _LOCAL,
    "retry": _LOCAL,
    "discard": _LOCAL,
    "bounce": _BOUNCE,
    "defer": _BOUNCE,
    "trace": _BOUNCE,
    "pickup": (_pickup, *_ANY_POSTFIX),
    "postsuper": (_removed, _queue_noise, *_ANY_POSTFIX),
    "tlsproxy": (_postscreen_connect, _postscreen_disconnect, *_ANY_POSTFIX),
}
#: The shapes for any other Postfix program (``postfix/master``, ``postfix/postfix-script``...).
ANY_PROGRAM: Final = _ANY_POSTFIX
#: Every Postfix shape once, in table order.
POSTFIX_SHAPES: Final = tuple(dict.fromkeys(s for shapes in BY_PROGRAM.values() for s in shapes))
