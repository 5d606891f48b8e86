"""Monitoring: budget alerts before the money is gone, idle GPUs, failed jobs, a dashboard.

Why one component for both platforms: finance and team leads get the same mails whether the
GPU hours were bought from AWS or burnt on the company's own machines. On AWS, a Budgets
budget filtered to the team's cost tag notifies an SNS topic (with e-mail subscriptions) at
each threshold, both on actual and on forecasted spend; CloudWatch alarms watch GPU
utilisation and the runner's failed-job metric. On-prem there is no bill, so spend is GPU
hours priced at an internal rate: Prometheus rules alert on actual and forecast spend,
Alertmanager mails the same people, and Grafana shows the dashboard.

Metric contract with the runner: CloudWatch ``HybridML/JobsFailed`` and
``CWAgent/nvidia_smi_utilization_gpu`` (dimension ``GpuPool``); Prometheus
``hybridml_jobs_failed_total``, ``hybridml_gpu_seconds_total{team}`` and DCGM's
``DCGM_FI_DEV_GPU_UTIL``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
from pydantic import Field, field_validator

from components.base import Args, OrgTags, Platform, PlatformComponent

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SPEND_KINDS = ("ACTUAL", "FORECASTED")
NAMESPACE = "HybridML"
"""The CloudWatch namespace of the runner's run-end metrics (runners/runs/telemetry.py)."""
TEXTFILE = "/var/lib/node_exporter/textfile_collector/hybridml.prom"
"""Where the runner writes its counters on-prem, in node_exporter's textfile-collector directory
(``--collector.textfile.directory``), so the Prometheus that scrapes node_exporter gets them."""


class Budget(Args):
    """Who is told when spend crosses which share of the monthly budget (the stack config's
    ``budget`` section)."""

    monthly_usd: float = Field(gt=0)
    thresholds_percent: list[int] = Field(default_factory=lambda: [50, 80, 100], min_length=1)
    notify: list[str] = Field(min_length=1)
    """E-mail addresses subscribed to every alert."""
    gpu_hour_usd: float = Field(0.9, gt=0)
    """On-prem internal rate, used to price GPU hours against the budget."""

    @field_validator("thresholds_percent")
    @classmethod
    def _thresholds(cls, value: list[int]) -> list[int]:
        if any(not 0 < t <= 1000 for t in value) or len(set(value)) != len(value):
            raise ValueError(f"{value}: give distinct percentages between 1 and 1000, e.g. [50, 80, 100]")
        return sorted(value)

    @field_validator("notify")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        bad = [e for e in value if not _EMAIL.match(e)]
        if bad:
            raise ValueError(f"{bad} are not e-mail addresses")
        return value


class MonitoringArgs(Args):
    platform: Platform
    tags: OrgTags
    budget: Budget
    gpu_pools: list[str] = Field(default_factory=list)
    """GPU pool names whose utilisation is watched for idleness."""
    idle_gpu_percent: float = Field(5, gt=0, lt=100)
    idle_minutes: int = Field(30, ge=5)
    namespace: str = "monitoring"
    textfile: str = Field(TEXTFILE, pattern=r"^/\S+\.prom$")
    """On-prem: the textfile the runner's counters go to, which the rules here read."""


class Monitoring(PlatformComponent):
    """Outputs: ``alerts`` (the topic ARN, or the Alertmanager receiver), ``budget``,
    ``dashboard``; on-prem also ``textfile`` (where the runner's counters go)."""

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("hybridml:observability:Monitoring", name, opts)
        outputs = self._aws(args) if args.platform == "aws" else self._onprem(args)
        for key, value in outputs.items():
            setattr(self, key, value)
        self.register_outputs(outputs)

    def _aws(self, args: MonitoringArgs) -> dict[str, Any]:
        tags = args.tags.as_tags()
        topic = aws.sns.Topic(self.child_name("alerts"), tags=tags, opts=self.child_opts())
        aws.sns.TopicPolicy(
            self.child_name("alerts-policy"),
            arn=topic.arn,
            policy=topic.arn.apply(_topic_policy),
            opts=self.child_opts(),
        )
        for i, email in enumerate(args.budget.notify):
            aws.sns.TopicSubscription(
                self.child_name(f"mail-{i}"),
                topic=topic.arn,
                protocol="email",
                endpoint=email,
                opts=self.child_opts(),
            )
        budget = aws.budgets.Budget(
            self.child_name("budget"),
            budget_type="COST",
            time_unit="MONTHLY",
            limit_amount=f"{args.budget.monthly_usd:.2f}",
            limit_unit="USD",
            cost_filters=[{"name": "TagKeyValue", "values": [f"user:team${args.tags.team}"]}],
            notifications=[
                {
                    "comparison_operator": "GREATER_THAN",
                    "threshold": t,
                    "threshold_type": "PERCENTAGE",
                    "notification_type": kind,
                    "subscriber_sns_topic_arns": [topic.arn],
                }
                for kind in SPEND_KINDS
                for t in args.budget.thresholds_percent
            ],
            tags=tags,
            opts=self.child_opts(),
        )
        alarm = {
            "alarm_actions": [topic.arn],
            "ok_actions": [topic.arn],
            "tags": tags,
            "opts": self.child_opts(),
        }
        for pool in args.gpu_pools:
            aws.cloudwatch.MetricAlarm(
                self.child_name(f"idle-{pool}"),
                namespace="CWAgent",
                metric_name="nvidia_smi_utilization_gpu",
                dimensions={"GpuPool": pool},
                statistic="Average",
                period=300,
                evaluation_periods=args.idle_minutes // 5,
                comparison_operator="LessThanThreshold",
                threshold=args.idle_gpu_percent,
                treat_missing_data="notBreaching",
                alarm_description=f"GPUs of pool {pool} idle for {args.idle_minutes} min",
                **alarm,
            )
        aws.cloudwatch.MetricAlarm(
            self.child_name("failed-jobs"),
            namespace=NAMESPACE,
            metric_name="JobsFailed",
            statistic="Sum",
            period=300,
            evaluation_periods=1,
            comparison_operator="GreaterThanOrEqualToThreshold",
            threshold=1,
            treat_missing_data="notBreaching",
            alarm_description="a training job failed",
            **alarm,
        )
        dashboard = aws.cloudwatch.Dashboard(
            self.child_name("dashboard"),
            # Dashboard names are account-wide: the stack's name keeps two stacks apart.
            dashboard_name=f"hybridml-{pulumi.get_stack()}-{self.child_name('dashboard')}",
            dashboard_body=json.dumps(_cloudwatch_dashboard(args)),
            opts=self.child_opts(),
        )
        return {"alerts": topic.arn, "budget": budget.name, "dashboard": dashboard.dashboard_name}

    def _onprem(self, args: MonitoringArgs) -> dict[str, Any]:
        labels = args.tags.as_tags(**{"app.kubernetes.io/part-of": "hybridml"})
        meta = {"namespace": args.namespace, "labels": labels}
        rules = k8s.apiextensions.CustomResource(
            self.child_name("rules"),
            api_version="monitoring.coreos.com/v1",
            kind="PrometheusRule",
            metadata={**meta, "name": self.child_name("rules")},
            spec={"groups": [{"name": "hybridml", "rules": prometheus_rules(args)}]},
            opts=self.child_opts(),
        )
        receiver = self.child_name("mail")
        k8s.apiextensions.CustomResource(
            self.child_name("routing"),
            api_version="monitoring.coreos.com/v1alpha1",
            kind="AlertmanagerConfig",
            metadata={**meta, "name": self.child_name("routing")},
            spec={
                "route": {
                    "receiver": receiver,
                    "groupBy": ["alertname"],
                    "matchers": [{"name": "team", "value": args.tags.team}],
                },
                "receivers": [
                    {
                        "name": receiver,
                        "emailConfigs": [{"to": e, "sendResolved": True} for e in args.budget.notify],
                    }
                ],
            },
            opts=self.child_opts(),
        )
        dashboard = k8s.core.v1.ConfigMap(
            self.child_name("dashboard"),
            metadata={
                **meta,
                "name": self.child_name("dashboard"),
                "labels": {**labels, "grafana_dashboard": "1"},
            },
            data={"hybridml.json": json.dumps(_grafana_dashboard(args))},
            opts=self.child_opts(),
        )
        return {
            "alerts": receiver,
            "budget": rules.metadata["name"],
            "dashboard": dashboard.metadata["name"],
            "textfile": args.textfile,
        }


def prometheus_rules(args: MonitoringArgs) -> list[dict[str, Any]]:
    """Alert rules: idle GPUs, failed jobs, and GPU-hour spend against the budget."""
    team = args.tags.team
    spend = {  # USD over a rolling 30 days; forecast extrapolates the last 7 days' rate
        "ACTUAL": f'sum(increase(hybridml_gpu_seconds_total{{team="{team}"}}[30d]))'
        f" / 3600 * {args.budget.gpu_hour_usd}",
        "FORECASTED": f'sum(rate(hybridml_gpu_seconds_total{{team="{team}"}}[7d]))'
        f" * 30 * 86400 / 3600 * {args.budget.gpu_hour_usd}",
    }
    labels = {"team": team}
    rules = [
        {
            "alert": "HybridMLGpuIdle",
            "expr": f"avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL) < {args.idle_gpu_percent}",
            "for": f"{args.idle_minutes}m",
            "labels": {**labels, "severity": "warning"},
            "annotations": {"summary": "GPUs on {{ $labels.Hostname }} are idle"},
        },
        {
            "alert": "HybridMLJobFailed",
            "expr": "increase(hybridml_jobs_failed_total[10m]) > 0",
            "labels": {**labels, "severity": "warning"},
            "annotations": {"summary": "a training job failed"},
        },
    ]
    for kind in SPEND_KINDS:
        for pct in args.budget.thresholds_percent:
            limit = args.budget.monthly_usd * pct / 100
            rules.append(
                {
                    "alert": f"HybridMLBudget{kind.title()}{pct}",
                    "expr": f"{spend[kind]} > {limit:g}",
                    "labels": {
                        **labels,
                        "severity": "critical" if pct >= 100 else "warning",
                        "spend": kind.lower(),
                        "threshold_percent": str(pct),
                    },
                    "annotations": {
                        "summary": f"{kind.lower()} GPU spend over {pct}% of the "
                        f"{args.budget.monthly_usd:g} USD budget"
                    },
                }
            )
    return rules


def _topic_policy(topic_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AlertPublishers",
                    "Effect": "Allow",
                    "Principal": {"Service": ["budgets.amazonaws.com", "cloudwatch.amazonaws.com"]},
                    "Action": "SNS:Publish",
                    "Resource": topic_arn,
                }
            ],
        }
    )


def _cloudwatch_dashboard(args: MonitoringArgs) -> dict[str, Any]:
    gpu = [["CWAgent", "nvidia_smi_utilization_gpu", "GpuPool", p] for p in args.gpu_pools]
    widgets = [
        {
            "type": "metric",
            "width": 12,
            "height": 6,
            "properties": {"title": "GPU utilisation", "metrics": gpu, "stat": "Average", "period": 300},
        },
        {
            "type": "metric",
            "width": 12,
            "height": 6,
            "properties": {
                "title": "Failed jobs",
                "metrics": [[NAMESPACE, "JobsFailed"]],
                "stat": "Sum",
                "period": 300,
            },
        },
    ]
    return {"widgets": [w for w in widgets if w["properties"]["metrics"]]}


def _grafana_dashboard(args: MonitoringArgs) -> dict[str, Any]:
    team = args.tags.team
    panels = [
        ("GPU utilisation", "avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL)"),
        (
            "GPU spend, 30 days (USD)",
            f'sum(increase(hybridml_gpu_seconds_total{{team="{team}"}}'
            f"[30d])) / 3600 * {args.budget.gpu_hour_usd}",
        ),
        ("Failed jobs", "sum(increase(hybridml_jobs_failed_total[1h]))"),
    ]
    return {
        "title": f"hybridml {team}",
        "uid": f"hybridml-{team}",
        "schemaVersion": 39,
        "panels": [
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "gridPos": {"x": 12 * (i % 2), "y": 8 * (i // 2), "w": 12, "h": 8},
                "targets": [{"expr": expr, "refId": "A"}],
            }
            for i, (title, expr) in enumerate(panels)
        ],
    }
