"""The runner profile contract: what a stack exports as ``runnerProfile`` and ``hml`` reads.

Defined once, here, below both sides: the stacks' tests validate their exported profile with
``parse_profile`` and the runner loads ``hybridml.yaml`` with the same function, so the two
can never drift. Each target kind has its model; a backend's ``Config`` is that model.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hmlkit.errors import ProfileError
from hmlkit.ssh.hosts import SshHost
from hmlkit.validation import format_errors

BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
STORE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
TEAM_PATTERN = r"^[A-Za-z0-9_.-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Vault(_Strict):
    """Where secrets come from: ``HML_SECRET_<NAME>`` variables, or AWS Secrets Manager."""

    kind: Literal["env", "aws"] = "env"
    prefix: str = ""
    region: str | None = None


class CloudWatchTelemetry(_Strict):
    region: str = Field(min_length=1)
    namespace: str = Field(default="HybridML", min_length=1)
    """The namespace components/monitoring.py's alarm and dashboard read."""


class Telemetry(_Strict):
    """What the runner publishes when a run on this target ends (runners/runs/telemetry.py), for the
    monitors components/monitoring.py provisions: CloudWatch on AWS, a node_exporter textfile
    on-prem."""

    team: str = Field(default="default", pattern=TEAM_PATTERN)
    """Whose GPU seconds and spend these are (the budget's team tag)."""
    cloudwatch: CloudWatchTelemetry | None = None
    prometheus_textfile: str | None = Field(default=None, pattern=r"\.prom$")
    """A ``*.prom`` file in node_exporter's ``--collector.textfile.directory``."""


class TeamBudget(_Strict):
    """A team's monthly spend limit across every target (runners/runs/budget.py): a submit
    whose worst case would pass it is refused; telemetry's team spend feeds the alarms that
    fire at ``alert_at`` (shares of ``monthly_usd``)."""

    monthly_usd: float = Field(gt=0)
    alert_at: list[Annotated[float, Field(gt=0, le=10)]] = [0.5, 0.8]


class TargetConfig(_Strict):
    """Base of every target kind's model: unknown keys are refused, the kind is named."""

    kind: str
    near: list[str] = []
    """The profile's stores this target sits next to: ``--target auto`` prefers it for jobs
    whose inputs live there, as their bytes need not cross a slow link."""
    telemetry: Telemetry = Telemetry()


class LocalTarget(TargetConfig):
    kind: Literal["local"] = "local"
    gpu_hour_usd: float = Field(default=0.0, ge=0)


class ShellTarget(TargetConfig):
    """What every kind that reaches hosts through the SSH layer (``hmlkit.ssh``) shares."""

    known_hosts: str | None = None
    """The hosts' keys (``hml targets trust`` records them); unset: ``known_hosts`` beside the
    runner's other state, in ``$HML_HOME`` (default ``~/.hybridml``)."""
    remote_root: str = ".hybridml"
    """Where code, runs and GPU claims live on each host; relative paths are under the login home."""
    gpu_hour_usd: float = Field(default=0.0, ge=0)
    max_workdir_mb: float = Field(default=100.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    data_via: Literal["auto", "store", "ssh"] = "auto"
    """How job inputs reach the hosts: ``store`` (each host reads presigned URLs itself), ``ssh``
    (the runner streams the bytes over SSH: hosts that cannot reach the store), or ``auto``
    (the store, falling back to SSH when a host cannot reach it)."""
    env_via: Literal["auto", "index", "ssh"] = "auto"
    """How the wheels of a job's ``environment:`` reach hosts that have not built it yet:
    ``index`` (each host's pip reads the lock's index), ``ssh`` (the runner sends them: hosts
    without an index), or ``auto`` (the index, else SSH when a host's probe cannot reach it)."""

    @field_validator("remote_root")
    @classmethod
    def _root(cls, value: str) -> str:
        return value[2:] if value.startswith("~/") else value


TrackingVia = Literal["direct", "runner"]
"""How a job's tracking relay reaches the tracking server: ``direct`` from the host, or ``runner``
through a port the runner forwards over its own SSH connection (hmlkit/ssh/forward.py), for
hosts that cannot reach the server; then the runner must reach it, over ``http://``."""


class SshTarget(ShellTarget):
    kind: Literal["ssh"] = "ssh"
    hosts: list[SshHost] = Field(min_length=1)
    tracking_via: TrackingVia = "direct"


class SlurmTarget(ShellTarget):
    """A Slurm cluster, reached through its login node; Slurm decides where and when a job runs.

    ``remote_root`` must be on the file system the login node shares with the compute nodes:
    code is staged there once and every node reads it, and writes its output beside it.
    """

    kind: Literal["slurm"] = "slurm"
    login: SshHost
    partition: str | None = None
    """One partition, or several (``gpu,gpu-long``): Slurm starts the job in the first with room."""
    account: str | None = None
    qos: str | None = None
    constraints: str | None = None
    """A Slurm ``--constraint`` expression over node features, e.g. ``a100&ib``."""
    gres_name: str = Field(default="gpu", pattern=r"^[A-Za-z0-9_]+$")
    """The GRES that counts GPUs (``--gres=<name>:N``), as the cluster's gres.conf names it."""
    slurm_conf: str | None = None
    """The cluster's slurm.conf on the login node, where it is not the default (a login node
    serving several clusters sets ``SLURM_CONF`` the same way)."""

    @field_validator("partition", "account", "qos", "constraints")
    @classmethod
    def _sbatch_word(cls, value: str | None) -> str | None:
        """These go into ``#SBATCH`` lines as they are: one word, no quotes."""
        if value is not None and not re.fullmatch(r"[^\s'\"\\#]+", value):
            raise ValueError(f"{value!r}: one word without spaces or quotes, e.g. gpu,gpu-long or a100&ib")
        return value


class AwsTarget(TargetConfig):
    """EC2 GPU instances launched per run from the pool's launch template (or an AMI).

    AWS credentials and endpoint come from boto3's own chain (``AWS_PROFILE``, instance role,
    ``AWS_ENDPOINT_URL``): nothing here is secret.
    """

    kind: Literal["aws"] = "aws"
    region: str = Field(min_length=1)
    tracking_via: TrackingVia = "direct"
    launch_template: str | None = None
    """Launch template id (the GpuNodePool's); its AMI, disk and IAM profile are used."""
    launch_template_version: str = "$Default"
    ami: str | None = None
    subnets: list[str] = Field(min_length=1)
    security_group: str | None = None
    instance_types: list[str] = Field(min_length=1)
    """The allowed types; the cheapest that fits the job's resources is chosen."""
    market: Literal["spot", "on-demand", "spot-then-on-demand"] = "spot-then-on-demand"
    max_instances: int = Field(default=8, ge=1)
    prices: dict[str, float] = {}
    """On-demand USD per instance hour by type; else the built-in list prices (hmlkit.aws_prices)."""
    placement_group: str | None = None
    """A cluster placement group for multi-node jobs (EC2 places the nodes close together)."""
    ssh_user: str = "ubuntu"
    ssh_port: int = Field(default=22, ge=1, le=65535)
    key_name: str | None = None
    identity_file: str | None = None
    """Private key for the SSH login; its ``.pub`` is authorized through cloud-init."""
    tags: dict[str, str] = {}
    """The organisation's tags on every instance (team, cost-center)."""
    budget: str | None = None
    """The team's AWS Budgets name: a job whose worst case would pass it is refused."""
    remote_root: str = ".hybridml"
    boot_timeout: float = Field(default=600.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    max_workdir_mb: float = Field(default=100.0, gt=0)
    artifact_bucket: str | None = None
    secrets_prefix: str = ""

    @model_validator(mode="after")
    def _image(self) -> AwsTarget:
        if (self.launch_template is None) == (self.ami is None):
            raise ValueError("give exactly one of launch_template (an lt-... id) or ami (an ami-... id)")
        return self


class DataStore(_Strict):
    """An S3 API endpoint that holds datasets: AWS S3 itself, or the on-prem S3-compatible store.

    Credentials come from boto3's own chain (``AWS_PROFILE``, instance role): nothing here is secret.
    """

    endpoint_url: str | None = None
    """``https://minio.example.internal:9000``; unset means AWS S3 (or ``AWS_ENDPOINT_URL``)."""
    region: str | None = None
    buckets: list[Annotated[str, Field(pattern=BUCKET_PATTERN)]] = Field(min_length=1)
    """The versioned buckets whose datasets hml snapshots (the ObjectStore component's)."""


class Toleration(_Strict):
    """A taint the job's pods tolerate: the GPU pool's (``nvidia.com/gpu=present:NoSchedule``)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class KubernetesTarget(TargetConfig):
    """A Kubernetes cluster's GPU pool: each attempt is an Indexed Job (runners/backends/kubernetes.py).

    The API is reached with a kubeconfig file and context (``kubeconfig: null`` means
    ``$KUBECONFIG`` or ``~/.kube/config``), or, for a runner inside the cluster, the pod's own
    service account (``in_cluster: true``). Nothing here is secret.
    """

    kind: Literal["kubernetes"] = "kubernetes"
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    image: str = Field(min_length=1)
    """The training image: bash, python3 and the job's libraries (the workdir comes separately)."""
    gpu_resource: str = Field(default="nvidia.com/gpu", pattern=r"^[a-z0-9.-]+/[a-z0-9._-]+$")
    node_selector: dict[str, str] = {}
    """The GPU pool's labels, e.g. ``{hml.dev/pool: gpu}``."""
    tolerations: list[Toleration] = []
    service_account: str | None = None
    priority_class: str | None = None
    local_queue: str | None = None
    """A Kueue ``LocalQueue``: the Job is made suspended with its label, and Kueue admits it."""
    gpu_hour_usd: float = Field(default=0.0, ge=0)
    max_workdir_mb: float = Field(default=0.7, gt=0, le=0.9)
    """The workdir travels in a ConfigMap (at most 1 MiB with the wrapper's files): bigger trees
    belong in a dataset (``inputs:``) or the image."""

    @model_validator(mode="after")
    def _api(self) -> KubernetesTarget:
        if self.in_cluster and (self.kubeconfig or self.context):
            raise ValueError("in_cluster: true uses the pod's service account; remove kubeconfig and context")
        return self


TARGET_KINDS: dict[str, type[TargetConfig]] = {
    "local": LocalTarget,
    "ssh": SshTarget,
    "slurm": SlurmTarget,
    "aws": AwsTarget,
    "kubernetes": KubernetesTarget,
}


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = None
    default_target: str | None = None
    vault: Vault | None = None
    placement: list[str] = []
    """``--target auto`` tries these targets in order and takes the first with room now
    (e.g. ``[onprem, aws]``: own GPUs first, burst to the cloud); default: every target."""
    probe_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """How long the tracking server and each target may take to answer before submit gives up."""
    stores: dict[Annotated[str, Field(pattern=STORE_NAME_PATTERN)], DataStore] = {}
    """Where datasets live, by name (``hml data``, a job's ``inputs``)."""
    targets: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"local": {"kind": "local"}})
    """Each target's raw config (kept as given: runs record it); ``target()`` gives its model."""
    local_server: bool = True
    """Without ``tracking_uri``: ``hml submit`` may start a local tracking server on loopback for
    the embedded default's store and keep it warm (runners/tracking/local_server.py, docs/security.md)."""
    budgets: dict[Annotated[str, Field(pattern=TEAM_PATTERN)], TeamBudget] = {}
    """Each team's monthly limit, by the team a run names (its job's ``team``, else its
    target's ``telemetry.team``): the stacks export their budget config here."""
    source: str = Field(default="embedded default", exclude=True)

    def target(self, name: str) -> TargetConfig:
        raw = self.targets[name]
        return TARGET_KINDS[raw["kind"]].model_validate(raw)

    def placement_order(self) -> list[str]:
        return self.placement or list(self.targets)

    def pick(self, name: str | None) -> str:
        chosen = name or self.default_target or ("local" if "local" in self.targets else None)
        if chosen is None:
            raise ProfileError(
                self.source,
                [f"no target given and no default_target; use --target {' or '.join(self.targets)}"],
            )
        if chosen not in self.targets:
            raise ProfileError(
                self.source, [f"unknown target {chosen!r}; defined: {', '.join(self.targets)}"]
            )
        return chosen


def target_problems(raw: Any) -> list[str]:
    """Problems with one target's config, as ``field: message`` lines (empty when valid)."""
    if not isinstance(raw, dict) or "kind" not in raw:
        return [f"kind: required; one of: {', '.join(TARGET_KINDS)}"]
    model = TARGET_KINDS.get(raw["kind"])
    if model is None:
        return [f"kind: {raw['kind']!r} is not one of: {', '.join(TARGET_KINDS)}"]
    try:
        model.model_validate(raw)
    except ValidationError as exc:
        return format_errors(exc)
    return []


def parse_profile(data: Any, source: str) -> Profile:
    """Validate a whole profile, each target against its kind's model; ProfileError lists all."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise ProfileError(source, [f"(top level): expected a mapping of fields, got {kind}"])
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(source, format_errors(exc)) from None
    profile.source = source
    if not profile.targets:
        raise ProfileError(source, ["targets: define at least one target, e.g. local: {kind: local}"])
    problems = [f"targets.{name}.{p}" for name, raw in profile.targets.items() for p in target_problems(raw)]
    problems += [
        f"placement: {name!r} is not one of: {', '.join(profile.targets)}"
        for name in profile.placement
        if name not in profile.targets
    ]
    buckets: dict[str, str] = {}
    for store_name, store in profile.stores.items():
        for bucket in store.buckets:
            if bucket in buckets:
                problems.append(
                    f"stores.{store_name}.buckets: {bucket!r} is in stores.{buckets[bucket]} too; keep one"
                )
            buckets.setdefault(bucket, store_name)
    problems += [
        f"targets.{name}.near: {store!r} is not a store of the profile "
        f"({', '.join(profile.stores) or 'none defined'})"
        for name, raw in profile.targets.items()
        if isinstance(raw, dict)
        for store in raw.get("near") or []
        if isinstance(store, str) and store not in profile.stores
    ]
    if profile.default_target and profile.default_target not in profile.targets:
        problems.append(
            f"default_target: {profile.default_target!r} is not one of: {', '.join(profile.targets)}"
        )
    if problems:
        raise ProfileError(source, problems)
    return profile
