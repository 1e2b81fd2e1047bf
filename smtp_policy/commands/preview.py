"""Preview what people would read for a reply, before going live (a dry run of the maps server).

REPLY is a reply as Postfix's SMTP server sends it (its words are joined with spaces; a
multi-line reply has one NNN- line per line). Prints what the connecting client reads (the
reply and the reject footer the maps server adds) and what the bounce says (the text the dsn
map gives), with the [texts] entry that worded each and the knowledge rule behind them. It
answers from the same configuration and the same code as `smtp-policy maps`. Postfix sends the
maps server only the reply: session placeholders ({recipient}, {sender}, {client_addr}) stay
empty in footers and DSN texts, here as live; --recipient and --sender only fill in the bounce
lines. A reply that does not start with a 3-digit code is refused (exit 1).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from smtp_policy.commands._options import add_config_option, ip_address
from smtp_policy.commands._serve import warning_printer
from smtp_policy.config import load_config
from smtp_policy.core.errors import SmtpPolicyError
from smtp_policy.core.policy import own_replies, recognised_rule
from smtp_policy.core.rewrite import MapAnswer, answer_lookup
from smtp_policy.core.texts import Audience, audience_of
from smtp_policy.data.i18n import bounce_words

HELP = "preview the footer and bounce text people would read for a reply"

#: One line of a Postfix reply: code, separator, an optional enhanced code, the text.
_REPLY_LINE = re.compile(r"([2-5]\d\d)([ -]|$)(?:([245]\.\d{1,3}\.\d{1,3})(?= |$))?")


class NotAReplyError(SmtpPolicyError):
    """The text given to preview is not an SMTP reply."""


@dataclass(frozen=True, slots=True)
class PostfixReply:
    """A reply as Postfix's SMTP server sends it: one code, the literal enhanced code, lines."""

    code: int
    enhanced: str | None
    texts: tuple[str, ...]  # each line after "NNN " / "NNN-"

    @property
    def key(self) -> str:
        """The footer map's lookup key: the whole reply, lines joined with CRLF."""
        return "\r\n".join(self.wire_lines())

    def wire_lines(self) -> list[str]:
        """The lines with their code and continuation dashes."""
        return with_codes(self.code, list(self.texts))


def parse_postfix_reply(text: str) -> PostfixReply:
    """Read ``text`` as an SMTP reply; :class:`NotAReplyError` says why it is not one."""
    lines = [line.strip() for line in re.split(r"\r?\n", text.strip())]
    codes, texts = [], []
    enhanced = None
    for number, line in enumerate(lines):
        match = _REPLY_LINE.match(line)
        if match is None:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise NotAReplyError(
                f"not an SMTP reply: {shown!r} does not start with a 3-digit code "
                "(for example: 550 5.1.1 <bob@example.net>: User unknown)"
            )
        last = number == len(lines) - 1
        if (match.group(2) == "-") == last:
            raise NotAReplyError(
                "not an SMTP reply: every line but the last has a dash after the code (550-...), "
                "the last has none (550 ...)"
            )
        codes.append(int(match.group(1)))
        texts.append(line[4:].strip())
        if number == 0:
            enhanced = match.group(3)
    if len(set(codes)) > 1:
        raise NotAReplyError("not an SMTP reply: its lines carry different codes")
    return PostfixReply(codes[0], enhanced, tuple(texts))


def with_codes(code: int, texts: list[str]) -> list[str]:
    """Reply lines with their code: ``NNN-`` before every line but the last."""
    last = len(texts) - 1
    return [f"{code}{'-' if i < last else ' '}{t}".rstrip() for i, t in enumerate(texts)]


def client_reads(reply: PostfixReply, footer: str | None) -> list[str]:
    """The reply as the client reads it once Postfix has added ``footer`` (a map result).

    As ``smtpd_reject_footer_maps`` does: ``\\n`` starts a new line carrying the reply's code
    and enhanced code, a leading ``\\c`` continues the reply's last line, ``$$`` is a ``$``.
    """
    texts = list(reply.texts)
    if footer:
        text = footer.replace("$$", "$")
        same_line = text.startswith("\\c")
        parts = (text[2:] if same_line else text).split("\\n")
        if same_line:
            texts[-1] += parts.pop(0)
        prefix = f"{reply.enhanced} " if reply.enhanced else ""
        texts += [prefix + part for part in parts]
    return with_codes(reply.code, texts)


def dsn_key(reply: PostfixReply) -> str:
    """The dsn map's key for this reply: its status (X.Y.Z), then the reply on one line."""
    status = reply.enhanced or f"{reply.code // 100}.0.0"
    return f"{status} {' '.join(reply.wire_lines())}"


def bounce_line(dsn_result: str | None, recipient: str | None) -> str | None:
    """The bounce's per-recipient line, as Postfix writes it from the dsn map's result."""
    if not dsn_result:
        return None
    _, _, text = dsn_result.partition(" ")
    return f"<{recipient.strip('<>')}>: {text}" if recipient else text


def register(parser: argparse.ArgumentParser) -> None:
    """Add the preview options."""
    parser.add_argument("reply", nargs="+", metavar="REPLY", help="the reply; words are joined")
    parser.add_argument("--recipient", metavar="ADDRESS", help="the recipient the bounce names")
    parser.add_argument("--sender", metavar="ADDRESS", help="the sender the bounce goes to")
    parser.add_argument(
        "--client",
        metavar="IP",
        type=ip_address,
        help="the connecting client (says whether [texts] internal_networks holds it)",
    )
    parser.add_argument(
        "--audience",
        choices=("internal", "external"),
        help="preview this audience's texts for both (default: footers external, bounces "
        "internal, as the maps server does)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_option(parser)


def run(args: argparse.Namespace) -> int:
    """Preview, and print."""
    from smtp_policy.data import default_knowledge

    reply = parse_postfix_reply(" ".join(args.reply))
    config = load_config(args.config, on_warning=warning_printer("preview"))
    kb = default_knowledge()
    audience: Audience | None = args.audience
    own = own_replies(config.rules, kb=kb, texts=config.texts)
    footer = answer_lookup(
        "footer",
        reply.key,
        kb,
        config.texts,
        same_line=config.maps.same_line,
        audience=audience,
        own_rule=partial(recognised_rule, own),
    )
    dsn = answer_lookup(
        "dsn",
        dsn_key(reply),
        kb,
        config.texts,
        audience=audience,
        dsn_deferrals=config.maps.dsn_deferrals,
        bounce=(bounce_words(config.bounce.language), datetime.now(UTC)),
    )
    assert footer is not None and dsn is not None  # both maps exist
    client_note = None
    if args.client is not None:
        where = audience_of(args.client, config.texts)
        client_note = (
            f"client {args.client} is {where} ([texts] internal_networks); the footer map "
            "is not told the client and always words footers for the external audience"
        )
    result = preview_result(
        reply, footer, dsn, recipient=args.recipient, sender=args.sender, client_note=client_note
    )
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(render_preview(result))
    return 0


def preview_result(
    reply: PostfixReply,
    footer: MapAnswer,
    dsn: MapAnswer,
    *,
    recipient: str | None = None,
    sender: str | None = None,
    client_note: str | None = None,
) -> dict[str, object]:
    """Everything the preview shows, as the JSON object ``--json`` prints."""
    explanation = footer.explanation.to_dict()
    return {
        "reply": reply.key,
        "reason": explanation["reason"],
        "rule": explanation["rule"],
        "decided_by": explanation.get("decided_by"),
        "client_reads": client_reads(reply, footer.text),
        "footer": {
            "key": reply.key,
            "result": footer.text,
            "text_entry": footer.entry if footer.text else None,
            "audience": footer.audience,
        },
        "dsn": {
            "key": dsn_key(reply),
            "result": dsn.text,
            "bounce_line": bounce_line(dsn.text, recipient),
            "bounce_to": sender.strip("<>") if sender is not None else None,
            "text_entry": dsn.entry if dsn.text else None,
            "audience": dsn.audience,
        },
        "notes": [client_note] if client_note else [],
    }


def render_preview(result: dict[str, object]) -> str:
    """The preview as text: what the client reads, what the bounce says, what chose them."""
    footer = result["footer"]
    dsn = result["dsn"]
    assert isinstance(footer, dict) and isinstance(dsn, dict)
    client = result["client_reads"]
    assert isinstance(client, list)
    out = ["What the client reads (the reply, then the maps server's footer):"]
    out += [f"  {line}" for line in client]
    if footer["result"]:
        out.append(f"  (words: {footer['text_entry']}, for the {footer['audience']} audience)")
    else:
        out.append("  (no footer: the footer map answers NOTFOUND for this reply)")
    to = f" to <{dsn['bounce_to']}>" if dsn["bounce_to"] is not None else ""
    out += ["", f"What the bounce{to} says for this recipient (the dsn map's text):"]
    if dsn["bounce_line"]:
        out.append(f"  {dsn['bounce_line']}")
        out.append(f"  (words: {dsn['text_entry']}, for the {dsn['audience']} audience)")
    else:
        out.append("  (no DSN text: the dsn map leaves this status as Postfix wrote it)")
    why = f"reason {result['reason'] or 'none'}"
    why += f", knowledge rule {result['rule']}" if result["rule"] else ", no knowledge rule"
    if result.get("decided_by"):
        why += f", decided by {result['decided_by']}"
    out += ["", f"Explained as: {why}"]
    notes = result["notes"]
    assert isinstance(notes, list)
    out += [f"Note: {note}" for note in notes]
    return "\n".join(out)
