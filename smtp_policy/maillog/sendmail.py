"""The Sendmail 8.x line shapes (``sendmail``, ``sm-mta``, ``sm-msp-queue``...): deliveries,
envelopes, ruleset and milter rejects, lost connections, milter warnings and noise.

Sendmail's free-text ``key=value`` runs (``to=<list>, delay=..., stat=<text>``, ``ruleset=R,
arg1=A, relay=H, reject=T``) are split with string scans rather than one regex, so that no
line can make a match backtrack for long. The addresses in them are the client's text: a field
ends only at a ``, `` outside a quoted string (RFC 5321 quoted local parts), and the ruleset
line's arguments end only where Sendmail's ``relay=NAME [ADDR], reject=`` follows, so that no
address (nor a reply echoing it) can forge the fields after it.
"""

from __future__ import annotations

import re
from typing import Any, Final

from smtp_policy.core.stages import Stage, stage_of
from smtp_policy.maillog._shapes import (
    CODES,
    LEADING_CODES,
    Head,
    command_stage,
    reply_codes,
    shape,
)
from smtp_policy.maillog.record import LogRecord, new_record

__all__ = ["SENDMAIL_SHAPES"]

#: Sendmail's ``name [addr] (may be forged)`` / ``[addr]`` / ``name``.
_SM_CLIENT: Final = re.compile(r"(?P<name>[^\s\[\]]+)?(?: ?\[(?P<addr>[^\]]*)\])?")
_SM_DELAY: Final = re.compile(r"(?:\d+\+)?\d+:\d\d:\d\d\Z")
_SM_FIELD: Final = re.compile(r"(?P<key>\w+)=(?P<value>.*?)(?=, \w+=|\Z)")
#: A quoted string (``\\`` escapes) or a comma: what :func:`_unquoted` steps through.
_SM_QUOTED_OR_COMMA: Final = re.compile(r'"(?:[^"\\]++|\\.)*+"|,')
#: Sendmail's ``$_``: ``name [addr]``, ``[addr]`` or ``user@host``, maybe ``(may be forged)``.
_SM_RELAY: Final = r"(?:[^\s,\[\]\"]+(?: \[[^\s,\]]*\])?|\[[^\s,\]]*\])(?: \(may be forged\))?"
_SM_VERDICT: Final = r"(?=reject=|quarantine=|discard\Z)"
#: Where a ruleset line's arguments end: ``, relay=H, `` then the verdict (or, with no relay
#: logged, the verdict alone); and where ``arg1`` ends when an ``arg2`` follows.
_SM_RELAY_END: Final = re.compile(rf", relay=(?P<relay>{_SM_RELAY}), {_SM_VERDICT}")
_SM_BARE_END: Final = re.compile(rf", {_SM_VERDICT}")
_SM_ARG2: Final = re.compile(r", arg2=")
_SM_STAT: Final = re.compile(r", stat=")
#: The rulesets for commands outside a mail transaction (no :class:`Stage`): their command.
_SM_COMMAND_RULESETS: Final = {"check_etrn": "etrn", "check_vrfy": "vrfy"}
_SM_MILTER_ACTIONS: Final = {
    "reject": "milter-reject",
    "shutdown": "milter-reject",
    "rejecting commands": "milter-reject",
    "temp failing commands": "milter-tempfail",
    "discard": "milter-discard",
    "quarantine": "milter-quarantine",
}
_DSN_STATUS: Final = {"2": "sent", "4": "deferred", "5": "bounced"}


def _sm_seconds(text: str | None) -> float | None:
    """Sendmail's ``[D+]HH:MM:SS`` delay in seconds."""
    if not text or _SM_DELAY.match(text) is None:
        return None
    days, _, hms = text.rpartition("+")
    hours, minutes, seconds = hms.split(":")
    return float((int(days or 0) * 24 + int(hours)) * 3600 + int(minutes) * 60 + int(seconds))


def _sm_client(text: str | None) -> tuple[str | None, str | None]:
    """Sendmail's ``relay=`` text as (name, addr)."""
    if not text:
        return None, None
    m = _SM_CLIENT.match(text)
    if m is None:  # pragma: no cover - the pattern matches the empty string
        return None, None
    name, addr = m.groups()
    return name, addr


def _unquoted(
    pattern: re.Pattern[str], line: str, start: int, end: int | None = None
) -> re.Match[str] | None:
    """The first match of ``pattern`` at a ``,`` of ``line[start:end]`` that is outside every
    quoted string: where a Sendmail field ends, whatever the address before it holds."""
    end = len(line) if end is None else end
    for step in _SM_QUOTED_OR_COMMA.finditer(line, start, end):
        if step[0] == ",":
            found = pattern.match(line, step.start(), end)
            if found is not None:
                return found
    return None


def _ruleset_stage(ruleset: str) -> str | None:
    """The stage a ``check_*`` ruleset decides (``check_rcpt`` is ``rcpt``); None for others."""
    if not ruleset.startswith("check_"):
        return None
    return stage_of(ruleset) or _SM_COMMAND_RULESETS.get(ruleset)


def _addresses(text: str) -> str:
    """Sendmail's ``to=`` list (``<a>,<b>`` or ``a``) as ``a,b`` (a comma in a quoted local
    part stays in its address)."""
    if "," not in text:
        return text.strip("<> ")
    parts, start = [], 0
    for step in _SM_QUOTED_OR_COMMA.finditer(text):
        if step[0] == ",":
            parts.append(text[start : step.start()].strip("<> "))
            start = step.end()
    parts.append(text[start:].strip("<> "))
    return ",".join(parts)


@shape(
    "sendmail_to",
    r"to=(?=\S)(?=.*?, delay=(?:\d+\+)?\d+:\d\d:\d\d, )(?=.*?, pri=\d)(?=.*?, stat=)",
    "Apr  2 00:15:25 mta001 sendmail[12566]: u31FFPtp032300: to=<deferred1@example.com>, "
    "delay=00:00:15, xdelay=00:00:15, mailer=esmtp, pri=34527, relay=[93.184.216.34] "
    "[93.184.216.34], dsn=4.3.5, stat=Deferred: 451 4.3.5 Server configuration problem",
)
def _sendmail_to(m: re.Match[str], line: str, head: Head) -> LogRecord:
    """A Sendmail recipient status: a delivery, or (without mailer/xdelay/dsn) a recipient of a
    message that was never accepted (refused at end of data, or its client timed out).

    ``to=<list>, key=value, ..., stat=<text>`` is split with plain string scans, not one
    regex, so that no input can make it backtrack. ``stat=`` is always last and the rest of
    the line; the list ends at the first ``, key=`` outside a quoted address, and ``stat=``
    is the first one after it outside quotes (a recipient, and a reply echoing it, may hold
    ``, stat=`` in quotes).
    """
    start = m.end()
    found = _unquoted(_SM_STAT, line, start) or _SM_STAT.search(line, start)
    stat_at = found.start() if found is not None else len(line)
    stat = line[stat_at + 7 :]
    first = _unquoted(_SM_NEXT_FIELD, line, start, stat_at)
    end = first.start() if first is not None else stat_at
    to = _addresses(line[start:end].removesuffix(" [more]"))
    fields = _sm_fields(line[end + 2 : stat_at]) if first is not None else {}
    if "mailer" not in fields and "xdelay" not in fields and "dsn" not in fields:
        return _sendmail_refused_rcpt(to, fields, stat, head)
    dsn, reply = fields.get("dsn"), fields.get("reply")
    status = _DSN_STATUS.get(dsn[0]) if dsn else _stat_status(stat)
    extra = [("stat", stat)]
    extra += [(k, fields[k]) for k in _SM_EXTRA if k in fields]
    return new_record(
        "sendmail_delivery",
        *head,
        direction="downstream",
        code=_sm_code(reply, stat),
        enhanced=dsn,
        reply=reply or stat,
        status=status,
        recipient=to,
        relay=fields.get("relay"),
        delay=_sm_seconds(fields.get("delay")),
        dsn=dsn,
        extra=tuple(extra),
    )


_SM_NEXT_FIELD: Final = re.compile(r", (?=[a-z_]+=)")
_SM_KEY: Final = re.compile(r"(\w+)=")
_SM_DSN: Final = re.compile(r"\d\.\d{1,3}\.\d{1,3}\Z")
_SM_EXTRA: Final = ("pri", "mailer", "xdelay", "ctladdr", "quarantine", "ntries", "stage")


def _sm_fields(text: str) -> dict[str, str]:
    """Sendmail's ``key=value, key=value`` run as a dict (a bad ``dsn=`` is dropped).

    A value ends at a ``, key=`` outside quotes (``ctladdr=`` holds an address); ``reply=``,
    the remote server's text and the last field before ``stat=``, takes the rest; the first
    of a key counts. One published log lost the comma in ``relay=host dsn=4.0.0``; that is
    split too.
    """
    fields: dict[str, str] = {}
    pos = 0
    while (key := _SM_KEY.match(text, pos)) is not None:
        value_at = key.end()
        if key[1] == "reply":
            fields.setdefault("reply", text[value_at:])
            break
        comma = _unquoted(_SM_NEXT_FIELD, text, value_at)
        fields.setdefault(key[1], text[value_at : comma.start() if comma else len(text)])
        if comma is None:
            break
        pos = comma.end()
    relay = fields.get("relay")
    if relay is not None and "dsn" not in fields and " dsn=" in relay:
        fields["relay"], _, fields["dsn"] = relay.partition(" dsn=")
    dsn = fields.get("dsn")
    if dsn is not None and _SM_DSN.match(dsn) is None:
        del fields["dsn"]
    return fields


def _stat_status(stat: str) -> str | None:
    """Sendmail's status word when no dsn= was logged."""
    if stat.startswith("Sent"):
        return "sent"
    if stat.startswith("Deferred"):
        return "deferred"
    return None


def _sm_code(reply: str | None, stat: str) -> int | None:
    """The remote reply's code: from ``reply=``, else from ``stat=Deferred: 451 ...``.

    ``stat=Sent (...)`` carries the remote text without its code.
    """
    if reply:
        text = reply
    elif stat.startswith("Sent"):
        return None
    else:
        text = stat[10:] if stat.startswith("Deferred: ") else stat
    m = LEADING_CODES.match(text)
    code = m["code"] if m is not None else None
    return int(code) if code else None


_SM_LOST_TEXTS: Final = ("lost input channel", "collect: I/O error", "collect: premature EOM")


def _sendmail_refused_rcpt(to: str, fields: dict[str, str], stat: str, head: Head) -> LogRecord:
    common: dict[str, Any] = {
        "direction": "upstream",
        "recipient": to,
        "delay": _sm_seconds(fields.get("delay")),
        "reply": stat,
        "extra": (("stat", stat), ("pri", fields.get("pri", ""))),
    }
    if stat.startswith("timeout waiting for input"):
        return new_record("timeout", *head, stage=Stage.DATA, **common)
    if stat == "aborted by sender":  # RSET or QUIT ended the transaction: no reply in it
        return new_record("noise", *head, recipient=to, extra=common["extra"])
    if stat.startswith(_SM_LOST_TEXTS):
        return new_record("lost_connection", *head, stage=Stage.DATA, **common)
    code, esc = reply_codes(stat, 0)
    return new_record(
        "sendmail_milter_reject",
        *head,
        stage=Stage.EOM,
        action="milter-reject",
        code=code,
        enhanced=esc,
        **common,
    )


@shape(
    "sendmail_from",
    r"from=(?P<from><[^>]*+>|[^,\s]*+), size=(?P<size>\d+), class=(?P<class>-?\d+), "
    r"nrcpts=(?P<nrcpts>\d+)(?:, (?P<more>.*))?\Z",
    "Jan  5 00:14:44 a.mx.example.net sm-mta[14292]: jB88Ea4v014292: from=<u5412@h4636.com>, "
    "size=2710, class=0, nrcpts=1, msgid=<u5413@h4636.com>, bodytype=8BITMIME, proto=ESMTP, "
    "daemon=MTA, relay=relay_id [10.11.12.13]",
)
def _sendmail_from(m: re.Match[str], line: str, head: Head) -> LogRecord:
    extra = [("size", m["size"]), ("class", m["class"]), ("nrcpts", m["nrcpts"])]
    more = m["more"]
    values: dict[str, Any] = {}
    if more:
        for key, value in _SM_FIELD.findall(more):
            if key == "relay":
                values["relay"] = value
                values["client_name"], values["client_addr"] = _sm_client(value)
            elif key == "msgid":
                values["message_id"] = value.strip("<>") or None
            elif key == "proto":
                values["proto"] = value
            else:
                extra.append((key, value))
    return new_record(
        "sendmail_from",
        *head,
        sender=m["from"].strip("<>"),
        extra=tuple(extra),
        **values,
    )


@shape(
    "sendmail_ruleset_reject",
    r"ruleset=(?P<ruleset>[^,\s]+), arg1=(?=.*?, (?:reject=|discard\Z|quarantine=))",
    "Feb 27 15:49:02 batman sm-mta[88377]: s1REn1un088377: ruleset=check_rcpt, "
    "arg1=<non-existing-user@example.com>, relay=189-30-205-74.paebv701.dsl.brasiltelecom.net.br"
    " [189.30.205.74], reject=550 5.1.1 <non-existing-user@example.com>... User unknown",
)
def _sendmail_ruleset_reject(m: re.Match[str], line: str, head: Head) -> LogRecord:
    """``ruleset=R, arg1=A[, arg2=B][, relay=H], reject=T|discard|quarantine=Q``, as Sendmail's
    ``rscheck`` writes it.

    The arguments (and the reply, which often echoes them) are the client's text: they end at
    the first ``, relay=NAME [ADDR], `` + verdict outside a quoted string (without a relay
    logged, at the first ``, `` + verdict), so an address holding ``, relay=..., reject=...``
    forges nothing.
    """
    ruleset, start = m["ruleset"], m.end()
    end = (
        _unquoted(_SM_RELAY_END, line, start)
        or _unquoted(_SM_BARE_END, line, start)
        or _SM_RELAY_END.search(line, start)
        or _SM_BARE_END.search(line, start)
    )
    assert end is not None  # the shape's lookahead saw a verdict
    relay, verdict_at = end["relay"], end.end()
    action, reply, quarantine = "reject", None, None
    if line.startswith("reject=", verdict_at):
        reply = line[verdict_at + 7 :]
    elif line.startswith("quarantine=", verdict_at):
        action, quarantine = "quarantine", line[verdict_at + 11 :]
    else:
        action = "discard"
    arg2_at = _unquoted(_SM_ARG2, line, start, end.start())
    if arg2_at is None:
        arg1, arg2 = line[start : end.start()], ""
    else:
        arg1, arg2 = line[start : arg2_at.start()], line[arg2_at.end() : end.start()]
    name, addr = _sm_client(relay)
    code, esc = reply_codes(line, verdict_at + 7) if reply is not None else (None, None)
    extra = [("ruleset", ruleset), ("arg1", arg1)]
    extra += [(k, v) for k, v in (("arg2", arg2), ("quarantine", quarantine)) if v]
    return new_record(
        "sendmail_ruleset_reject",
        *head,
        direction="upstream",
        stage=_ruleset_stage(ruleset),
        action=action,
        code=code,
        enhanced=esc,
        reply=reply,
        sender=arg1.strip("<>") if ruleset == "check_mail" else None,
        recipient=arg1.strip("<>") if ruleset == "check_rcpt" else None,
        client_name=name,
        client_addr=addr,
        relay=relay,
        extra=tuple(extra),
    )


@shape(
    "sendmail_milter_reject",
    r"Milter: (?:(?P<key>from|to|helo)=(?P<arg>.*?)|(?P<connect>connect): host=(?P<host>[^,\s]*), "
    r"addr=(?P<addr>[^,\s]*)|cmd=(?P<cmd>\w+)|data), "
    r"(?P<action>reject|shutdown|rejecting commands|temp failing commands|discard|quarantine)"
    r"(?:=(?=" + CODES + r")(?P<reply>.*))?\Z",
    "Jan  5 00:13:30 d.mx.example.net sm-mta[12001]: jB88D0Ng012001: Milter: to=<u5@h6.com>, "
    "reject=550 5.7.1 Recipient declines mail from a_host bogus helo info, please fix your system",
)
def _sendmail_milter_reject(m: re.Match[str], line: str, head: Head) -> LogRecord:
    key, arg, cmd = m["key"], m["arg"], m["cmd"]
    stage = stage_of(key or m["connect"] or "") or (Stage.DATA if cmd else Stage.EOM)
    code, reply = m["code"], m["reply"]
    return new_record(
        "sendmail_milter_reject",
        *head,
        direction="upstream",
        stage=stage,
        action=_SM_MILTER_ACTIONS[m["action"]],
        code=int(code) if code else None,
        enhanced=m["esc"],
        reply=_sm_milter_reply(reply) if reply else reply,
        sender=arg.strip("<>") if key == "from" else None,
        recipient=arg.strip("<>") if key == "to" else None,
        helo=arg if key == "helo" else None,
        client_name=m["host"],
        client_addr=m["addr"],
    )


_SM_ESCAPE: Final = re.compile(r"\\(.)")
_SM_ESCAPES: Final = {"r": "", "n": "\n", "t": "\t", "\\": "\\"}


def _sm_milter_reply(text: str) -> str:
    """A milter's reply as the client got it: Sendmail logs the reply it was handed, with its
    line breaks as ``\\r\\n`` and libmilter's ``%%`` for ``%`` (it expands them when it sends);
    the lines are joined by ``\\n`` here, as in the milter's own events."""
    if "\\" in text:
        text = _SM_ESCAPE.sub(lambda e: _SM_ESCAPES.get(e[1], e[0]), text)
    return text.replace("%%", "%")


@shape(
    "sendmail_reject",
    r"(?P<addr><[^<>]*>|[^\s<>]+?)\.\.\. (?=" + CODES + r")",
    "Jun 17 14:37:39 <mail.notice> robin sm-mta[2794]: 55HIbcGI002794: "
    "<baduser@yourhost.com>... User unknown",
)
def _sendmail_reject(m: re.Match[str], line: str, head: Head) -> LogRecord:
    """Sendmail's own error for an address it refused (``<addr>... User unknown``)."""
    code = m["code"]
    return new_record(
        "sendmail_reject",
        *head,
        direction="upstream",
        stage=Stage.RCPT,
        action="reject",
        code=int(code) if code else None,
        enhanced=m["esc"],
        reply=line[m.end() :],
        recipient=m["addr"].strip("<>"),
    )


@shape(
    "sendmail_dsn",
    r"(?P<new>(?=[A-Za-z]*\d)[0-9A-Za-z]{8,20}): (?P<notice>DSN|return to sender|postmaster "
    r"notify|sender notify): (?P<text>.*)\Z",
    "Jan  5 00:14:46 a.mx.example.net sm-mta[14560]: jB88Ea4v014292: jB88Ek4v014560: DSN: "
    "User unknown",
)
def _sendmail_dsn(m: re.Match[str], line: str, head: Head) -> LogRecord:
    return new_record(
        "bounce_notice",
        *head,
        direction="downstream",
        reply=m["text"],
        new_queue_id=m["new"],
        extra=(("notice", m["notice"]),),
    )


@shape(
    "sendmail_lost_input",
    r"lost input channel from (?P<client>.+?) to (?P<daemon>\S+) after (?P<stage>\w+)\Z",
    "Jan  5 00:13:30 b.mx.example.net sm-mta[7916]: jB88DCqu007916: lost input channel from "
    "a_host [10.11.12.13] (may be forged) to MTA after rcpt",
)
def _sendmail_lost_input(m: re.Match[str], line: str, head: Head) -> LogRecord:
    name, addr = _sm_client(m["client"])
    return new_record(
        "lost_connection",
        *head,
        direction="upstream",
        stage=command_stage(m["stage"]),
        client_name=name,
        client_addr=addr,
        extra=(("daemon", m["daemon"]),),
    )


@shape(
    "sendmail_collect_error",
    r"(?:SYSERR\([^)]*\): )?collect: (?>(?P<what>[^:]+?) on connection from )(?P<client>[^,]*?),? "
    r"from=(?P<sender>\S*)\Z",
    "Jan  5 00:14:21 b.mx.example.net sm-mta[6116]: jB87hKsl006116: SYSERR(root): collect: I/O "
    "error on connection from a_host from=<u3965@u3965.org>",
)
def _sendmail_collect_error(m: re.Match[str], line: str, head: Head) -> LogRecord:
    name, addr = _sm_client(m["client"])
    return new_record(
        "lost_connection",
        *head,
        direction="upstream",
        stage=Stage.DATA,
        reply=m["what"],
        sender=m["sender"].strip("<>"),
        client_name=name,
        client_addr=addr,
    )


@shape(
    "sendmail_timeout",
    r"timeout waiting for input from (?P<client>.+?) during (?P<during>.+)\Z",
    "Jan  5 00:13:47 a.mx.example.net sm-mta[10890]: jB87DYhq010890: timeout waiting for input "
    "from a_host during server cmd read",
)
def _sendmail_timeout(m: re.Match[str], line: str, head: Head) -> LogRecord:
    name, addr = _sm_client(m["client"])
    return new_record(
        "timeout",
        *head,
        direction="upstream",
        client_name=name,
        client_addr=addr,
        extra=(("during", m["during"]),),
    )


@shape(
    "sendmail_warning",
    r"(?:Milter \((?P<milter>[^)]*)\)|milter_\w+\((?P<in_milter>[^)]*)\)|SYSERR\((?P<user>[^)]*)\)"
    r"|Milter): (?!collect: )"
    r"(?!(?:from|to|helo|cmd)=|connect: |data, |no active filter"
    r"|(?:init success to negotiate|abort filter|connect to filters)\Z)",
    "Jan  5 00:13:47 a.mx.example.net sm-mta[10890]: jB87DYhq010890: Milter (filter1): "
    "write(Q) returned -1, expected 5: Broken pipe",
)
def _sendmail_warning(m: re.Match[str], line: str, head: Head) -> LogRecord:
    """A milter or system problem: ``Milter (name): ...`` (``to error state`` when Sendmail
    goes on without the milter), ``milter_sys_read(name): ...``, ``SYSERR(user): ...``."""
    milter = m["milter"] or m["in_milter"]
    extra = [("level", "syserr" if m["user"] is not None else "milter")]
    extra.append(("message", line[m.end() :]))
    if milter is not None:
        extra.append(("milter", milter))
    return new_record("warning", *head, extra=tuple(extra))


@shape(
    "sendmail_noise",
    r"(?:done; delay=|(?:\S+ )?(?:\[[^\]]*\] )?(?:\(may be forged\) )?did not issue "
    r"|\[[^\]]*\]: possible SMTP attack|AUTH(?:=\w+,| failure)|STARTTLS(?:=\w+,|: )"
    r"|Authentication-Warning|Losing |clone: |starting daemon |alias database "
    r"|Milter: no active filter|Milter (?:add|change|insert|delete|accept|message)\b"
    r"|(?:discarded|quarantined)\Z"
    # LogLevel 10+ and Milter.LogLevel 10+ lines (8.17): sessions, milter steps, startup
    r"|connect from (?:[^\s\[\]]+ )?\[[^\]]*\]|AUTH: available mech=|SMTP outgoing connect on "
    r"|milter=[^,\s]+, action=\w+, "
    r"|Milter(?: \([^)]*\): (?:init success to negotiate|abort filter)|: connect to filters)\Z"
    r"|stopping daemon, reason=|started as: |engine=\S*, path=|error: safesasl\("
    r"|\S+: \d+ aliases, longest )",
    "Apr  2 00:15:25 mta001 sendmail[32302]: u31FFPtp032300: done; delay=00:00:00, ntries=2",
)
def _sendmail_noise(m: re.Match[str], line: str, head: Head) -> LogRecord:
    """Lines that carry no reply or delivery: session and milter steps, startup, statistics.

    ``milter=NAME, action=rcpt, reject=...`` is noise too: the same reply is logged again as
    ``Milter: to=<...>, reject=...`` (:func:`_sendmail_milter_reject`).
    """
    return new_record("noise", *head)


# -- Table -------------------------------------------------------------------------------------

#: Every Sendmail shape, in the order they are tried.
SENDMAIL_SHAPES: Final = (
    _sendmail_to,
    _sendmail_from,
    _sendmail_ruleset_reject,
    _sendmail_milter_reject,
    _sendmail_reject,
    _sendmail_dsn,
    _sendmail_lost_input,
    _sendmail_collect_error,
    _sendmail_timeout,
    _sendmail_warning,
    _sendmail_noise,
)
