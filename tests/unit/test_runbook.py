"""Every alert rule links to a section of the operator's runbook that exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces to '-'."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
        found.add(text.replace(" ", "-"))
    return found


def test_every_alert_rule_has_a_runbook_section() -> None:
    rules = yaml.safe_load((ROOT / "infra/prometheus/alerts.yml").read_text())
    anchors = _anchors((ROOT / "docs/runbook.md").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert alerts
    for rule in alerts:
        url = rule["annotations"].get("runbook_url", "")
        assert url.startswith("docs/runbook.md#"), f"{rule['alert']} has no runbook_url"
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: no section {url}"


def test_the_runbook_covers_every_halt_and_the_retry_tiers() -> None:
    anchors = _anchors((ROOT / "docs/runbook.md").read_text())
    sections = (
        "a-halted-stage",
        "service-crash-looping",
        "dead-letters-arriving",
        "an-outage-absorbed-by-the-retry-tiers",
        "consumer-group-stalled-or-stopped",
    )
    for section in sections:
        assert section in anchors
