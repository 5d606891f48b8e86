"""Monitoring: budget thresholds on actual and forecasted spend reach the subscribers."""

from __future__ import annotations

import json

import pytest

from components.base import ArgsError, OrgTags
from components.monitoring import Budget, Monitoring, MonitoringArgs
from policies.offline import run_program
from tests.programs import missing_tags

TAGS = OrgTags(team="ml-platform", cost_center="cc-4711", environment="prod")
MAILS = ["finance@example.com", "ml-lead@example.com"]


def _deploy(budget: dict | None = None, **overrides):
    args = {
        "platform": "aws",
        "tags": TAGS,
        "gpu_pools": ["gpu"],
        **overrides,
        "budget": Budget(**{"monthly_usd": 5000, "notify": MAILS, **(budget or {})}),
    }
    return run_program(lambda: Monitoring("mon", MonitoringArgs(**args)))


def test_aws_budget_notifies_actual_and_forecast_at_each_threshold():
    result = _deploy()
    (budget,) = result.by_type("aws:budgets/budget:Budget")
    (topic,) = result.by_type("aws:sns/topic:Topic")
    assert budget.inputs["limitAmount"] == "5000.00" and budget.inputs["timeUnit"] == "MONTHLY"
    assert budget.inputs["costFilters"] == [{"name": "TagKeyValue", "values": ["user:team$ml-platform"]}]
    seen = {(n["notificationType"], n["threshold"]) for n in budget.inputs["notifications"]}
    assert seen == {(k, t) for k in ("ACTUAL", "FORECASTED") for t in (50, 80, 100)}
    assert all(
        n["subscriberSnsTopicArns"] == [topic.outputs["arn"]] and n["thresholdType"] == "PERCENTAGE"
        for n in budget.inputs["notifications"]
    )


def test_aws_topic_mails_every_subscriber_and_lets_budgets_publish():
    result = _deploy()
    (topic,) = result.by_type("aws:sns/topic:Topic")
    subs = result.by_type("aws:sns/topicSubscription:TopicSubscription")
    assert sorted(s.inputs["endpoint"] for s in subs) == MAILS
    assert all(s.inputs["protocol"] == "email" and s.inputs["topic"] == topic.outputs["arn"] for s in subs)
    (policy,) = result.by_type("aws:sns/topicPolicy:TopicPolicy")
    statement = json.loads(policy.inputs["policy"])["Statement"][0]
    assert "budgets.amazonaws.com" in statement["Principal"]["Service"]


def test_aws_alarms_watch_idle_gpus_and_failed_jobs():
    result = _deploy(idle_minutes=60)
    alarms = {a.name: a.inputs for a in result.by_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
    idle = alarms["mon-idle-gpu"]
    assert (idle["metricName"], idle["comparisonOperator"], idle["threshold"]) == (
        "nvidia_smi_utilization_gpu",
        "LessThanThreshold",
        5,
    )
    assert idle["period"] * idle["evaluationPeriods"] == 3600
    assert idle["dimensions"] == {"GpuPool": "gpu"}
    failed = alarms["mon-failed-jobs"]
    assert (failed["namespace"], failed["metricName"], failed["threshold"]) == ("HybridML", "JobsFailed", 1)
    (dashboard,) = result.by_type("aws:cloudwatch/dashboard:Dashboard")
    assert len(json.loads(dashboard.inputs["dashboardBody"])["widgets"]) == 2
    assert dashboard.inputs["dashboardName"] == "hybridml-stack-mon-dashboard"


def test_onprem_gpu_hour_budget_rules_and_mail_routing():
    result = _deploy(
        platform="onprem", budget={"gpu_hour_usd": 1.5, "monthly_usd": 3000, "thresholds_percent": [100, 50]}
    )
    (rule_cr,) = [r for r in result.by_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")]
    rules = {r["alert"]: r for r in rule_cr.inputs["spec"]["groups"][0]["rules"]}
    assert set(rules) == {
        "HybridMLGpuIdle",
        "HybridMLJobFailed",
        "HybridMLBudgetActual50",
        "HybridMLBudgetActual100",
        "HybridMLBudgetForecasted50",
        "HybridMLBudgetForecasted100",
    }
    actual = rules["HybridMLBudgetActual50"]["expr"]
    assert actual.endswith("/ 3600 * 1.5 > 1500") and 'team="ml-platform"' in actual
    assert "rate(" in rules["HybridMLBudgetForecasted100"]["expr"]
    assert rules["HybridMLBudgetForecasted100"]["expr"].endswith("> 3000")
    (routing,) = result.by_type("kubernetes:monitoring.coreos.com/v1alpha1:AlertmanagerConfig")
    receiver = routing.inputs["spec"]["receivers"][0]
    assert [c["to"] for c in receiver["emailConfigs"]] == MAILS
    assert routing.inputs["spec"]["route"]["matchers"] == [{"name": "team", "value": "ml-platform"}]
    (dashboard,) = result.by_type("kubernetes:core/v1:ConfigMap")
    assert dashboard.inputs["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard.inputs["data"]["hybridml.json"])["panels"]


@pytest.mark.parametrize("platform", ["aws", "onprem"])
def test_children_parented_and_tagged(platform):
    result = _deploy(platform=platform)
    (mon,) = result.by_type("hybridml:observability:Monitoring")
    custom = [r for r in result.resources if r.custom]
    assert custom and all(r.parent == mon.urn and r.name.startswith("mon-") for r in custom)
    assert missing_tags(result, TAGS.as_tags()) == []


@pytest.mark.parametrize(
    "budget, message",
    [
        ({"monthly_usd": 0}, "monthly_usd: Input should be greater than 0"),
        ({"thresholds_percent": [50, 50]}, "give distinct percentages"),
        ({"notify": ["finance"]}, r"\['finance'\] are not e-mail addresses"),
        ({"notify": []}, "notify: List should have at least 1 item"),
    ],
)
def test_bad_budget_says_what_to_fix(budget, message):
    with pytest.raises(ArgsError, match=message):
        _deploy(budget=budget)


def test_idle_window_is_bounded():
    with pytest.raises(ArgsError, match="idle_minutes: Input should be greater than or equal"):
        _deploy(idle_minutes=1)
