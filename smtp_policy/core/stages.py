"""The SMTP stages, and the one place a command's name in any MTA's spelling becomes one.

Postfix logs ``END-OF-MESSAGE`` and ``in reply to end of DATA command``, its policy protocol
says ``protocol_state=EHLO``, Sendmail's rulesets are ``check_rcpt`` and its milter lines say
``from``/``to``; :func:`stage_of` maps all of them to a :class:`Stage`. Commands outside a mail
transaction (VRFY, ETRN, QUIT, ...) have no stage: callers keep their lowercased name.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Stage(StrEnum):
    """An SMTP stage, in session order: where a reply answers and where a rule is decided."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    EOM = "eom"


#: Every spelling of a command the MTAs use, lowercased, by its stage.
_SPELLINGS: Final = {
    Stage.CONNECT: ("connect", "check_relay"),
    Stage.HELO: ("helo", "ehlo", "lhlo"),
    Stage.MAIL: ("mail", "mail from", "check_mail", "from"),
    Stage.RCPT: ("rcpt", "rcpt to", "check_rcpt", "to"),
    Stage.DATA: ("data", "bdat", "cmd=data", "check_data"),
    Stage.EOM: ("eom", "end-of-message", "end of data", "end-of-data", "check_eom"),
}
_BY_COMMAND: Final = {spelling: stage for stage, names in _SPELLINGS.items() for spelling in names}

#: Session order, for "is this fact known yet" questions.
ORDER: Final = tuple(Stage)


def stage_of(command: str) -> Stage | None:
    """The stage ``command`` belongs to, in any spelling above (case and spaces ignored)."""
    return _BY_COMMAND.get(command.strip().lower())
