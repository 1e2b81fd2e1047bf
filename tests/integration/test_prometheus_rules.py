"""The shipped Prometheus rules and Grafana dashboard: promtool checks them and runs their tests.

``promtool test rules`` feeds each alert made-up series on which it must fire (and ordinary
ones on which it must not): config/prometheus/smtp-policy.rules.test.yml. Whether every
expression runs against real metrics is tests/integration/test_metrics_prometheus.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from smtp_policy.adapters.follow.metrics import FollowMetrics
from smtp_policy.config.model import MetricsConfig
from smtp_policy.data import default_knowledge

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "smtp-policy.rules.yml"
RULES_TEST = ROOT / "config" / "prometheus" / "smtp-policy.rules.test.yml"
DASHBOARD = ROOT / "config" / "grafana" / "smtp-policy.json"
ALERTS = {
    "SmtpPolicyDeferralRateHigh",
    "SmtpPolicyGreylistingBacklog",
    "SmtpPolicyBounceSpike",
    "SmtpPolicyMilterFailOpen",
    "SmtpPolicyFollowerStalled",
    "SmtpPolicyQueueOld",
}


def promtool() -> str:
    """promtool's path (Debian's prometheus package; scripts/install-deps installs it)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install Debian's prometheus package")
    return path


def test_promtool_checks_the_rules() -> None:
    """promtool check rules: valid, every alert there."""
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout
    assert set(re.findall(r"- alert: (\w+)", RULES.read_text())) == ALERTS


def test_promtool_runs_the_rule_tests() -> None:
    """promtool test rules: each alert fires on its data and stays quiet otherwise."""
    done = subprocess.run(
        [promtool(), "test", "rules", str(RULES_TEST)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=RULES_TEST.parent,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert tested == ALERTS


def test_rules_and_dashboard_use_only_metrics_that_exist() -> None:
    """Every smtp_policy_* name in the rules and the dashboard is a family the follower has."""
    every = MetricsConfig(top_domains=5, queue_interval=60)
    registry = FollowMetrics(default_knowledge(), options=every).registry
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    used = set(re.findall(r"smtp_policy_\w+", RULES.read_text() + "\n".join(exprs)))
    assert used - names == set()
