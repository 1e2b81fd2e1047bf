"""Show what smtp_policy does, with the shipped defaults.

Explains a handful of real-world replies (Gmail, Microsoft 365, Yahoo, Postfix, Exim,
Sendmail, a DNSBL, a greylisting daemon, shorthands people write) the way every adapter
explains them, then prints the JSON one of them becomes.
"""

from __future__ import annotations

import argparse
import json

from ..core.explain import explain_text
from ..knowledge import default_knowledge
from .explain import render_text

HELP = "show smtp_policy explaining real-world replies"

SAMPLES = (
    "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
    "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
    "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp",
    "host mx.example.com[192.0.2.10] said: 452 4.2.2 The email account that you tried to reach "
    "is over quota. (in reply to RCPT TO command)",
    "554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org",
    "450 4.7.1 <bob@example.org>: Recipient address rejected: Greylisted, see "
    "http://postgrey.schweikert.ch/help/example.org.html",
    "connect to mx.example.net[203.0.113.5]:25: Connection timed out",
    "SMTP error from remote mail server after RCPT TO:<carol@example.com>: "
    "550 5.7.1 Relaying denied",
    "SMTP error 511",
)


def register(parser: argparse.ArgumentParser) -> None:
    """The demo takes no options yet."""


def run(args: argparse.Namespace) -> int:
    """Explain the samples."""
    kb = default_knowledge()
    for i, sample in enumerate(SAMPLES, start=1):
        print(f"--- reply {i} of {len(SAMPLES)}")
        print(render_text(explain_text(sample, kb)))
        print()
    print("--- the same first reply as JSON (smtp-policy explain --json):")
    print(json.dumps(explain_text(SAMPLES[0], kb).to_dict(), indent=2, ensure_ascii=False))
    return 0
