"""A Postfix SMTPD access policy delegation server that records every request.

Theory of operation: smtpd sends one attribute block per decision point it reaches (each
``protocol_state`` the check is placed at), waits for one ``action=`` line and reuses the
connection. We record each request as an event with all its attributes, ask the admin's rules
(if any) for a decision, and otherwise answer ``DUNNO`` so the restriction list goes on as if
we were not there. On malformed input the protocol wants no reply: we log and disconnect, and
Postfix applies the service's ``default_action`` (documented as DUNNO: fail open).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from ..core.errors import ProtocolError
from ..core.events import Event, Source
from ..emit import EventWriter
from ..wire.policy import PolicyDecoder, encode_action

#: Returns the action for a request (e.g. "REJECT text"), or None for no opinion (DUNNO).
Decide = Callable[[Mapping[str, str]], str | None]

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


def no_rules(request: Mapping[str, str]) -> str | None:
    """The decision when no rule is configured: none."""
    return None


class PolicyService:
    """Records requests and answers them."""

    def __init__(self, events: EventWriter, decide: Decide = no_rules) -> None:
        self._events = events
        self._decide = decide
        self._ids = itertools.count(1)

    def answer(self, request: Mapping[str, str], session: str) -> str:
        """The action for one request; DUNNO unless a rule decides (or fails)."""
        try:
            action = self._decide(request) or "DUNNO"
        except Exception as exc:  # a bug in a rule must not change Postfix's decision
            self._error(session, f"rule evaluation failed: {exc!r}")
            action = "DUNNO"
        state = request.get("protocol_state", "")
        fields = {
            ours: request[theirs] or None for theirs, ours in _FIELDS.items() if theirs in request
        }
        extra = {k: v for k, v in request.items() if k not in _FIELDS}
        self._events.emit(
            Event(
                event="policy_request",
                source=Source.POLICY,
                ts=datetime.now(UTC),
                stage=_STAGES.get(state, state.lower()) or None,
                session=session,
                extra={**extra, "action": action},
                **fields,  # type: ignore[arg-type]
            )
        )
        return action

    def _error(self, session: str, message: str) -> None:
        self._events.emit(
            Event(
                event="error",
                source=Source.POLICY,
                ts=datetime.now(UTC),
                session=session,
                text=message,
            )
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one smtpd connection until it closes, idles out or breaks the protocol."""
        session = f"policy-{next(self._ids)}"
        decoder = PolicyDecoder()
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
                if not data:
                    break
                decoder.feed(data)
                while (request := decoder.next()) is not None:
                    writer.write(encode_action(self.answer(request, session)))
                await writer.drain()
        except ProtocolError as exc:
            self._error(session, f"closing connection: {exc}")
        except TimeoutError:
            self._error(session, "closing idle connection")
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
