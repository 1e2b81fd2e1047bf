"""A Postfix SMTPD access policy delegation server that records every request.

Theory of operation: smtpd sends one attribute block per decision point it reaches (each
``protocol_state`` the check is placed at), waits for one ``action=`` line and reuses the
connection. We record each request as an event with all its attributes, ask the admin's rules
(if any) for the core's decision (:func:`smtp_policy.core.policy.decide`, the one the milter
makes), and otherwise answer ``DUNNO`` so the restriction list goes on as if we were not there.
On malformed input the protocol wants no reply: we log and disconnect, and Postfix applies the
service's ``default_action`` (documented as DUNNO: fail open).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from datetime import UTC, datetime

from smtp_policy.adapters._serve import EventBudget, flood_warning, serve_requests
from smtp_policy.config import Config
from smtp_policy.core.events import Event, EventKind, Source
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.policy import Decision, RuleAction, RuleFacts, decide
from smtp_policy.core.stages import stage_of
from smtp_policy.core.texts import audience_of
from smtp_policy.emit import EventWriter
from smtp_policy.wire.policy import PolicyDecoder, encode_action

IDLE_TIMEOUT = 330.0  # a little over smtpd_policy_service_max_idle (300 s)

_STAGES = {"END-OF-MESSAGE": "eom"}
_FIELDS = {
    "queue_id": "queue_id",
    "client_address": "client_addr",
    "client_name": "client_name",
    "helo_name": "helo",
    "sender": "sender",
    "recipient": "recipient",
}


def facts_of(request: Mapping[str, str]) -> RuleFacts:
    """What the rules may match on, from a request's attributes."""
    size = request.get("size", "")
    return RuleFacts(
        client_addr=request.get("client_address", ""),
        sender=request.get("sender"),
        recipient=request.get("recipient") or None,
        size=int(size) if size.isdigit() and size != "0" else None,
        authenticated=bool(request.get("sasl_username")),
        helo=request.get("helo_name") or None,
    )


#: The access(5) action of a rule that sends no reply ("accept" is DUNNO: a policy OK would
#: skip the restrictions after ours).
_NO_REPLY_ACTIONS = {
    RuleAction.DISCARD: "DISCARD",
    RuleAction.QUARANTINE: "HOLD",
    RuleAction.ACCEPT: "DUNNO",
}


def context_of(request: Mapping[str, str]) -> dict[str, str]:
    """The request's values for the template placeholders."""
    return {
        "recipient": request.get("recipient", ""),
        "sender": request.get("sender", ""),
        "client_addr": request.get("client_address", ""),
        "client_name": request.get("client_name", ""),
        "queue_id": request.get("queue_id", ""),
    }


def action_of(decision: Decision) -> str:
    """The access(5) action for a decision: ``code enhanced text`` on one line, or a verb."""
    reply = decision.reply()
    if reply is None:
        return _NO_REPLY_ACTIONS[decision.action]
    return f"{reply.code} {reply.enhanced} {' '.join(reply.lines)}"


class PolicyService:
    """Records requests and answers them."""

    def __init__(self, events: EventWriter, kb: KnowledgeBase, config: Config) -> None:
        self._events = events
        self._kb = kb
        self._ids = itertools.count(1)
        self._budget = EventBudget()
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Use the rules and texts of a newly loaded configuration."""
        self._budget.per_second = config.policy.events_per_second
        self._rules = config.rules
        self._texts = config.texts

    def decision(self, request: Mapping[str, str]) -> Decision | None:
        """The rules' decision for a request, or None (no rule for its stage matches)."""
        stage = stage_of(request.get("protocol_state", ""))
        if stage is None:
            return None
        facts = facts_of(request)
        audience = audience_of(facts.client_addr, self._texts)
        return decide(
            self._rules,
            stage,
            facts,
            kb=self._kb,
            texts=self._texts,
            context=context_of(request),
            audience=audience,
        )

    def answer(self, request: Mapping[str, str], session: str) -> str:
        """The action for one request; DUNNO unless a rule decides (or fails)."""
        try:
            decision = self.decision(request)
            action = "DUNNO" if decision is None else action_of(decision)
            rule = None if decision is None else decision.rule
        except Exception as exc:  # a bug in a rule must not change Postfix's decision
            self._error(session, f"rule evaluation failed: {exc!r}")
            action, rule = "DUNNO", None
        state = request.get("protocol_state", "")
        fields = {
            ours: request[theirs] or None for theirs, ours in _FIELDS.items() if theirs in request
        }
        extra = {k: v for k, v in request.items() if k not in _FIELDS}
        write, held = self._budget.take()
        if held:
            self._events.emit(flood_warning(Source.POLICY, held, self._budget.per_second))
        if not write:
            return action
        self._events.emit(
            Event(
                event=EventKind.POLICY_REQUEST,
                source=Source.POLICY,
                ts=datetime.now(UTC),
                stage=_STAGES.get(state, state.lower()) or None,
                session=session,
                rule=rule,
                friendly=action if rule else None,
                extra={**extra, "action": action},
                **fields,  # type: ignore[arg-type]
            )
        )
        return action

    def _error(self, session: str, message: str) -> None:
        self._events.error(Source.POLICY, message, session)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one smtpd connection until it closes, idles out or breaks the protocol."""
        session = f"policy-{next(self._ids)}"
        await serve_requests(
            reader,
            writer,
            PolicyDecoder(),
            lambda request: encode_action(self.answer(request, session)),
            idle_timeout=IDLE_TIMEOUT,
            on_error=lambda message: self._error(session, message),
        )
