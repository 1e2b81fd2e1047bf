"""Wiring smtp_policy into an existing Postfix main.cf: a pure plan that adds, never replaces.

:func:`plan_apply` turns what we want (:class:`Wiring`, from the configuration) and the admin's
main.cf values (``postconf -n``) into a :class:`Plan`: the parameters to change, each with its
current value, its new value and why, the parameters left alone and why, warnings, and
refusals (what cannot be merged safely). :func:`plan_remove` turns the record of an apply
(:class:`Applied`) back into the values from before. Nothing here runs ``postconf``; the
adapter (``smtp_policy.adapters.postconf``) reads and writes. docs/postfix-wiring.md explains
each rule.

Postfix lists: elements are separated by commas or whitespace; ``{ ... }`` groups (milter
entries, ``check_policy_service { ... }`` arguments, ``inline:{ ... }`` tables) are one
element. :func:`list_elements` splits a value so; :func:`with_element` and
:func:`without_element` insert and take out one element leaving the rest of the text as it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from smtp_policy.config.listen import ListenAddress
from smtp_policy.config.model import BannerConfig, Config
from smtp_policy.core.texts import POSTFIX_MACROS, mta_greeting

#: Postfix's queue directory on Debian: smtpd's chroot, so socket paths below it are relative.
POSTFIX_SPOOL = "/var/spool/postfix/"
#: The milter entry's own settings: fail open, protocol 6 (SMFIP_RCPT_REJ) whatever
#: ``milter_protocol`` says, timeouts that never hold a session for long.
MILTER_SETTINGS = (
    "default_action=accept",
    "protocol=6",
    "connect_timeout=5s",
    "command_timeout=10s",
    "content_timeout=60s",
)
POLICY_SETTINGS = ("timeout=5s", "default_action=DUNNO")
POLICY_RESTRICTION = "check_policy_service"
#: Where ``--with-policy`` puts our policy service: right after this restriction.
AFTER_RESTRICTION = "reject_unauth_destination"
#: Restrictions that end the list: nothing after them is ever evaluated.
FINAL_RESTRICTIONS = ("permit", "reject", "defer")
#: Every parameter ``--apply`` may change, in the order the plan shows them.
PARAMETERS = (
    "smtpd_milters",
    "smtpd_reject_footer_maps",
    "smtp_delivery_status_filter",
    "lmtp_delivery_status_filter",
    "smtpd_recipient_restrictions",
    "smtpd_banner",
    "bounce_template_file",
)
_SEPARATORS = frozenset(", \t\r\n")


class PostfixListError(ValueError):
    """A main.cf list value whose braces do not balance."""


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a Postfix list: its text and where it stands in the value."""

    text: str
    start: int
    end: int


def list_elements(value: str) -> tuple[Element, ...]:
    """The elements of ``value``, split at commas and whitespace outside ``{ }``."""
    elements: list[Element] = []
    depth = 0
    start: int | None = None
    for index, char in enumerate(value):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise PostfixListError(f"a '}}' without its '{{' at character {index + 1}")
        if depth == 0 and char in _SEPARATORS:
            if start is not None:
                elements.append(Element(value[start:index], start, index))
                start = None
        elif start is None:
            start = index
    if depth:
        raise PostfixListError("a '{' without its '}'")
    if start is not None:
        elements.append(Element(value[start:], start, len(value)))
    return tuple(elements)


def group_items(element: str) -> tuple[str, ...]:
    """The items of a ``{ a, b=c }`` group (an element without braces is its one item)."""
    if element.startswith("{") and element.endswith("}"):
        return tuple(e.text for e in list_elements(element[1:-1]))
    return (element,)


def with_element(value: str, element: str, before: int | None = None) -> str:
    """``value`` with ``element`` inserted before its element number ``before`` (None: last)."""
    elements = list_elements(value)
    if not elements:
        return element
    if before is None or before >= len(elements):
        return f"{value.rstrip(', ')}, {element}"
    at = elements[before].start
    return f"{value[:at]}{element}, {value[at:]}"


def without_element(value: str, element: str) -> str | None:
    """``value`` without the elements of ``element`` (a run of them), or None if absent."""
    wanted = [e.text for e in list_elements(element)]
    elements = list_elements(value)
    for first in range(len(elements) - len(wanted) + 1):
        run = elements[first : first + len(wanted)]
        if [e.text for e in run] != wanted:
            continue
        after = first + len(wanted)
        if after < len(elements):  # take the separator that follows it
            return value[: run[0].start] + value[elements[after].start :]
        if first > 0:  # the last element: take the separator before it
            return value[: elements[first - 1].end] + value[run[-1].end :]
        return value[: run[0].start] + value[run[-1].end :]
    return None


@dataclass(frozen=True, slots=True)
class Wiring:
    """What smtp_policy wants in main.cf, as main.cf values (None: leave that parameter be)."""

    milter: str
    footer_table: str
    dsn_table: str
    policy: str | None = None
    banner: str | None = None
    bounce_template: str | None = None
    replace_bounce_template: bool = False
    notes: tuple[str, ...] = ()

    @property
    def milter_endpoint(self) -> str:
        """Where our milter listens, as smtpd_milters names it."""
        return group_items(self.milter)[0]

    @property
    def policy_endpoint(self) -> str | None:
        """Where our policy server listens, as check_policy_service names it."""
        if self.policy is None:
            return None
        return group_items(list_elements(self.policy)[1].text)[0]


def milter_endpoint(listen: str, spool: str = POSTFIX_SPOOL) -> str:
    """The smtpd_milters form of the milter's listen address (spool sockets chroot-relative)."""
    address = ListenAddress.parse(listen)
    spool = spool.rstrip("/") + "/"
    if address.is_unix and address.path.startswith(spool):
        return f"unix:{address.path.removeprefix(spool)}"
    return address.postfix()


def socketmap(listen: str, name: str) -> str:
    """A socketmap table for map ``name`` at the maps server's listen address."""
    address = ListenAddress.parse(listen)
    if address.is_unix:
        return f"proxy:socketmap:{address.postfix()}:{name}"
    return f"socketmap:{address.postfix()}:{name}"


def milter_element(listen: str, spool: str = POSTFIX_SPOOL) -> str:
    """Our smtpd_milters entry: the endpoint and the settings that make it fail open."""
    return "{ " + ", ".join((milter_endpoint(listen, spool), *MILTER_SETTINGS)) + " }"


def policy_element(listen: str) -> str:
    """Our smtpd_recipient_restrictions element: the policy service, failing open (DUNNO)."""
    address = ListenAddress.parse(listen).postfix()
    return f"{POLICY_RESTRICTION} {{ " + ", ".join((address, *POLICY_SETTINGS)) + " }"


def postfix_banner(config: Config) -> str | None:
    """``[banner] greeting`` as an smtpd_banner, or None if it cannot be written as one."""
    banner = mta_greeting(config.banner.greeting, POSTFIX_MACROS)
    return banner if banner and banner.startswith("$myhostname") else None


def wiring_for(
    config: Config,
    *,
    with_policy: bool = False,
    bounce_template: str | None = None,
    replace_bounce_template: bool = False,
    spool: str = POSTFIX_SPOOL,
) -> Wiring:
    """What ``config`` wants in main.cf. The shipped greeting sets no smtpd_banner."""
    notes: list[str] = []
    banner = None
    if config.banner.greeting != BannerConfig().greeting:
        banner = postfix_banner(config)
        if banner is None:
            notes.append(
                "smtpd_banner left alone: [banner] greeting cannot be written as a Postfix "
                "smtpd_banner (it must start with {hostname} and use no '$')"
            )
    return Wiring(
        milter=milter_element(config.milter.listen, spool),
        footer_table=socketmap(config.maps.listen, "footer"),
        dsn_table=socketmap(config.maps.listen, "dsn"),
        policy=policy_element(config.policy.listen) if with_policy else None,
        banner=banner,
        bounce_template=bounce_template,
        replace_bounce_template=replace_bounce_template,
        notes=tuple(notes),
    )


@dataclass(frozen=True, slots=True)
class Change:
    """One parameter to write: ``current`` and ``new`` None mean "not in main.cf"."""

    parameter: str
    current: str | None
    new: str | None
    why: str
    added: str | None = None  # the element we put into a list, for --remove


@dataclass(frozen=True, slots=True)
class Kept:
    """A parameter we looked at and leave as it is, and why."""

    parameter: str
    current: str | None
    why: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A parameter we cannot merge safely, and why."""

    parameter: str
    why: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What an apply or a remove would do."""

    changes: tuple[Change, ...] = ()
    kept: tuple[Kept, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Applied:
    """The record of one parameter an apply changed: enough for --remove to undo it."""

    before: str | None
    value: str
    added: tuple[str, ...] = ()


@dataclass
class _Planner:
    """Collects one plan's decisions (mutable while planning; the result is frozen)."""

    current: Mapping[str, str]
    changes: list[Change] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def elements(self, parameter: str) -> tuple[Element, ...] | None:
        """The parameter's elements, or None (and a refusal) if its braces do not balance."""
        try:
            return list_elements(self.current.get(parameter, ""))
        except PostfixListError as exc:
            self.refusals.append(
                Refusal(parameter, f"its value cannot be read as a list ({exc}); fix main.cf first")
            )
            return None

    def change(self, parameter: str, new: str, why: str, added: str | None = None) -> None:
        self.changes.append(Change(parameter, self.current.get(parameter), new, why, added))

    def keep(self, parameter: str, why: str) -> None:
        self.kept.append(Kept(parameter, self.current.get(parameter), why))

    def plan(self) -> Plan:
        return Plan(
            tuple(self.changes), tuple(self.kept), tuple(self.refusals), tuple(self.warnings)
        )


def plan_apply(wiring: Wiring, current: Mapping[str, str], *, chrooted_smtpd: bool = False) -> Plan:
    """The changes that add ``wiring`` to main.cf's ``current`` values (``postconf -n``)."""
    planner = _Planner(current)
    planner.warnings.extend(wiring.notes)
    _plan_milter(planner, wiring)
    _plan_table(planner, "smtpd_reject_footer_maps", wiring.footer_table, "footer")
    _plan_dsn(planner, wiring)
    if wiring.policy is not None:
        _plan_policy(planner, wiring.policy)
    _plan_banner(planner, wiring.banner)
    _plan_bounce_template(planner, wiring)
    if chrooted_smtpd:
        _warn_chroot(planner, wiring)
    return planner.plan()


def _has_endpoint(elements: tuple[Element, ...], endpoint: str) -> Element | None:
    return next((e for e in elements if group_items(e.text)[0] == endpoint), None)


def _plan_milter(planner: _Planner, wiring: Wiring) -> None:
    name = "smtpd_milters"
    elements = planner.elements(name)
    if elements is None:
        return
    action = planner.current.get("milter_default_action", "tempfail")
    ours = _has_endpoint(elements, wiring.milter_endpoint)
    if ours is not None:
        planner.keep(name, "already holds our milter")
        if not any(item.startswith("default_action=") for item in group_items(ours.text)):
            planner.warnings.append(
                f"smtpd_milters: our milter's entry has no default_action, so "
                f"milter_default_action = {action} applies to it: it does not fail open"
            )
        return
    others = len(elements)
    why = "our milter, first: it records every stage, also those a later milter rejects"
    if not others:
        why = "our milter"
    planner.change(
        name, with_element(planner.current.get(name, ""), wiring.milter, 0), why, wiring.milter
    )
    if action != "accept" and others:
        planner.warnings.append(
            f"milter_default_action = {action} applies to your milters only: ours carries "
            "default_action=accept, so it fails open"
        )
    if "$smtpd_milters" in planner.current.get("non_smtpd_milters", ""):
        planner.warnings.append(
            "non_smtpd_milters = $smtpd_milters: our milter also sees locally submitted mail"
        )
    protocol = planner.current.get("milter_protocol")
    if protocol is not None and protocol != "6":
        planner.warnings.append(
            f"milter_protocol = {protocol} applies to your milters only: ours carries protocol=6"
        )


def _plan_table(planner: _Planner, name: str, table: str, what: str) -> None:
    """Add ``table`` to the list of tables ``name``, after the admin's (theirs match first)."""
    elements = planner.elements(name)
    if elements is None:
        return
    if any(e.text == table for e in elements):
        planner.keep(name, f"already holds our {what} table")
        return
    why = f"our {what} table"
    if elements:
        why = f"our {what} table after yours: the first match wins, so yours come first"
    planner.change(name, with_element(planner.current.get(name, ""), table), why, table)
    if name == "smtpd_reject_footer_maps" and planner.current.get("smtpd_reject_footer"):
        planner.warnings.append(
            "smtpd_reject_footer is set: where a footer table matches, its footer replaces it"
        )


def _plan_dsn(planner: _Planner, wiring: Wiring) -> None:
    """The smtp filter gets our DSN table; LMTP deliveries the same filter."""
    smtp, lmtp = "smtp_delivery_status_filter", "lmtp_delivery_status_filter"
    fallback = planner.current.get("default_delivery_status_filter", "")
    if smtp not in planner.current and fallback:
        # Unset, it means $default_delivery_status_filter: keep that meaning, then ours.
        new = with_element("$default_delivery_status_filter", wiring.dsn_table)
        planner.change(
            smtp, new, "your default_delivery_status_filter, then our DSN table", wiring.dsn_table
        )
    else:
        _plan_table(planner, smtp, wiring.dsn_table, "DSN")
    elements = planner.elements(lmtp)
    if elements is None:
        return
    texts = {e.text for e in elements}
    if not elements:
        planner.change(lmtp, "$smtp_delivery_status_filter", "LMTP deliveries: the same filter")
    elif texts & {"$smtp_delivery_status_filter", "${smtp_delivery_status_filter}"}:
        planner.keep(lmtp, "already follows smtp_delivery_status_filter")
    else:
        _plan_table(planner, lmtp, wiring.dsn_table, "DSN")


def _plan_policy(planner: _Planner, policy: str) -> None:
    name = "smtpd_recipient_restrictions"
    elements = planner.elements(name)
    if elements is None:
        return
    endpoint = group_items(list_elements(policy)[1].text)[0]
    for first, second in itertools.pairwise(elements):
        if first.text == POLICY_RESTRICTION and group_items(second.text)[0] == endpoint:
            planner.keep(name, "already asks our policy service")
            return
    texts = [e.text for e in elements]
    if AFTER_RESTRICTION in texts:
        at = texts.index(AFTER_RESTRICTION) + 1
        why = f"our policy service, right after {AFTER_RESTRICTION}; the rest kept in order"
    elif texts and texts[-1] in FINAL_RESTRICTIONS:
        at = len(texts) - 1
        why = f"our policy service, before the final {texts[-1]} (nothing after it is asked)"
    else:
        at = len(texts)
        why = f"our policy service, at the end (there is no {AFTER_RESTRICTION})"
    planner.change(name, with_element(planner.current.get(name, ""), policy, at), why, policy)


def _plan_banner(planner: _Planner, banner: str | None) -> None:
    name = "smtpd_banner"
    if banner is None:
        planner.keep(name, "[banner] sets no greeting of ours")
    elif planner.current.get(name) == banner:
        planner.keep(name, "already our [banner] greeting")
    else:
        planner.change(name, banner, "the [banner] greeting (--remove gives the old one back)")


def _plan_bounce_template(planner: _Planner, wiring: Wiring) -> None:
    name = "bounce_template_file"
    theirs = planner.current.get(name, "")
    ours = wiring.bounce_template
    if ours is None:
        planner.keep(name, "no bounce template of ours to use")
    elif theirs == ours:
        planner.keep(name, "already our bounce template")
    elif not theirs:
        planner.change(name, ours, "our friendlier bounce texts")
    elif wiring.replace_bounce_template:
        planner.change(name, ours, "our bounce texts instead of yours (--replace-bounce-template)")
    else:
        planner.keep(name, "you have your own (--replace-bounce-template uses ours instead)")


def _warn_chroot(planner: _Planner, wiring: Wiring) -> None:
    """A chrooted smtpd reaches a unix socket only below its queue directory."""
    for what, endpoint in (("milter", wiring.milter_endpoint), ("policy", wiring.policy_endpoint)):
        if endpoint and endpoint.startswith("unix:/"):
            planner.warnings.append(
                f"smtpd runs chrooted (master.cf), but our {what} socket {endpoint[5:]} is "
                f"outside its queue directory: smtpd cannot reach it (listen below "
                f"{POSTFIX_SPOOL} or on inet:127.0.0.1:PORT)"
            )


def plan_remove(record: Mapping[str, Applied], current: Mapping[str, str]) -> Plan:
    """The changes that take out what an apply added (``record``) and give back what it
    replaced; a parameter changed since in a way we cannot undo is refused."""
    planner = _Planner(current)
    for name, applied in record.items():
        now = current.get(name)
        if now == applied.value:
            why = (
                "back to its value before --apply"
                if applied.before is not None
                else ("not set before --apply")
            )
            planner.changes.append(Change(name, now, applied.before, why))
            continue
        new = now
        for element in applied.added:
            try:
                taken = None if new is None else without_element(new, element)
            except PostfixListError:
                break
            new = new if taken is None else taken
        if applied.added and new != now:
            if new == "" and applied.before is None:
                new = None
            planner.changes.append(
                Change(name, now, new, "our element taken out; your later edits kept")
            )
        elif applied.added and now is not None and not _contains_any(now, applied.added):
            planner.keep(name, "holds nothing of ours any more")
        else:
            planner.refusals.append(
                Refusal(
                    name,
                    f"changed since --apply (we set {applied.value!r}, it is now "
                    f"{now!r}): left as it is",
                )
            )
    return planner.plan()


def _contains_any(value: str, elements: tuple[str, ...]) -> bool:
    try:
        return any(without_element(value, element) is not None for element in elements)
    except PostfixListError:
        return True


def applied_values(current: Mapping[str, str], plan: Plan) -> dict[str, str]:
    """``current`` after ``plan``'s changes (what ``postconf -n`` shows once it is written)."""
    values = dict(current)
    for change in plan.changes:
        if change.new is None:
            values.pop(change.parameter, None)
        else:
            values[change.parameter] = change.new
    return values


def record_after_apply(record: Mapping[str, Applied], plan: Plan) -> dict[str, Applied]:
    """The apply record once ``plan`` is applied (an earlier ``before`` is kept)."""
    out = dict(record)
    for change in plan.changes:
        assert change.new is not None, "an apply only sets parameters"
        earlier = out.get(change.parameter)
        added = (change.added,) if change.added else ()
        if earlier is None:
            out[change.parameter] = Applied(change.current, change.new, added)
        else:
            out[change.parameter] = replace(earlier, value=change.new, added=earlier.added + added)
    return out


def record_after_remove(record: Mapping[str, Applied], plan: Plan) -> dict[str, Applied]:
    """The apply record once ``plan`` (a remove) is done: only what it refused is left."""
    refused = {r.parameter for r in plan.refusals}
    return {name: applied for name, applied in record.items() if name in refused}
