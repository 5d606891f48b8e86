"""TrackingServer: the one MLflow server every environment's runs land in.

Why one server: a run on an on-prem GPU box and a run on a cloud VM must be comparable side
by side, so the platform runs exactly one MLflow (Deployment + Service + Ingress on the
chosen cluster) and exports its URL in the runner profile. Its Postgres URI and admin
password come from the KeyVault as Pulumi secrets and reach the pod only through a
Kubernetes Secret; artifacts go to the ObjectStore (through MLflow's artifact proxy, so
clients need no bucket credentials); basic authentication is always on.

Platform differences are only how the server reaches the bucket: on AWS through an IAM role
for its service account (IRSA); on-prem through the S3-compatible endpoint with keys.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s
from pydantic import Field, model_validator

from components.base import Args, OrgTags, Platform, PlatformComponent

PORT = 5000


class TrackingSettings(Args):
    """How the server is exposed and sized (shared with the stack config's ``tracking``)."""

    hostname: str = Field(pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
    """Public DNS name; the tracking URI is ``https://<hostname>``."""
    image: str = "ghcr.io/mlflow/mlflow:v2.16.2"
    replicas: int = Field(2, ge=1)
    ingress_class: str = "nginx"
    tls_secret: str = "mlflow-tls"
    """Kubernetes TLS secret for the hostname (cert-manager or the platform team's)."""
    service_account_role_arn: str | None = None
    """AWS: IAM role (IRSA) with read/write on the artifact bucket."""
    tracking_uri: str | None = Field(None, pattern=r"^https?://\S+$")
    """The tracking URI the runners get (``runnerProfile.tracking_uri``) where it is not
    ``https://<hostname>``: e.g. an internal proxy's address in front of this server."""
    await_ingress: bool = True
    """Whether ``pulumi up`` waits for the Ingress to get its load-balancer address, which the
    cluster's ingress controller writes into its status. ``false`` only on a cluster with no
    controller that publishes one (a test bed; an ingress-nginx without ``--publish-service``):
    there the address never comes and the provider would fail the update after its 10 min wait."""


class TrackingServerArgs(TrackingSettings):
    platform: Platform
    """Where the artifact bucket is: AWS S3 (IRSA) or the on-prem endpoint (keys)."""
    tags: OrgTags
    db_uri: str | pulumi.Output
    """Postgres URI (secret) from the KeyVault."""
    admin_password: str | pulumi.Output
    """MLflow admin password (secret) from the KeyVault."""
    artifact_bucket: str | pulumi.Output
    namespace: str = "hybridml"
    s3_endpoint_url: str | None = None
    s3_access_key: str | pulumi.Output | None = None
    s3_secret_key: str | pulumi.Output | None = None

    @model_validator(mode="after")
    def _bucket_access(self) -> TrackingServerArgs:
        keys = (self.s3_endpoint_url, self.s3_access_key, self.s3_secret_key)
        if self.platform == "onprem" and None in keys:
            raise ValueError(
                "platform 'onprem' needs s3_endpoint_url, s3_access_key and "
                "s3_secret_key to reach the artifact bucket"
            )
        if self.platform == "aws" and any(k is not None for k in keys):
            raise ValueError(
                "platform 'aws' reaches S3 through service_account_role_arn; "
                "remove s3_endpoint_url/s3_access_key/s3_secret_key"
            )
        return self


def auth_config(db_uri: str, admin_password: str) -> str:
    """MLflow's basic-auth config: users in Postgres, everyone read-only until granted."""
    return "\n".join(
        [
            "[mlflow]",
            "default_permission = READ",
            f"database_uri = {db_uri}",
            "admin_username = admin",
            f"admin_password = {admin_password}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            "",
        ]
    )


class TrackingServer(PlatformComponent):
    """Outputs: ``url`` (the tracking URI for every runner), ``service``."""

    def __init__(
        self, name: str, args: TrackingServerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("hybridml:tracking:TrackingServer", name, opts)
        app = {"app.kubernetes.io/name": "mlflow", "app.kubernetes.io/instance": name}
        labels = args.tags.as_tags(**app, **{"app.kubernetes.io/part-of": "hybridml"})
        meta = {"namespace": args.namespace, "labels": labels}
        db_uri = pulumi.Output.secret(args.db_uri)
        data = {
            "MLFLOW_BACKEND_STORE_URI": db_uri,
            "basic_auth.ini": pulumi.Output.all(db_uri, pulumi.Output.secret(args.admin_password)).apply(
                lambda v: auth_config(*v)
            ),
        }
        if args.platform == "onprem":
            data["AWS_ACCESS_KEY_ID"] = pulumi.Output.secret(args.s3_access_key)
            data["AWS_SECRET_ACCESS_KEY"] = pulumi.Output.secret(args.s3_secret_key)
        secret = k8s.core.v1.Secret(
            self.child_name("config"),
            metadata={**meta, "name": self.child_name("config")},
            type="Opaque",
            string_data=data,
            opts=self.child_opts(),
        )
        annotations = (
            {"eks.amazonaws.com/role-arn": args.service_account_role_arn}
            if args.service_account_role_arn is not None
            else {}
        )
        account = k8s.core.v1.ServiceAccount(
            self.child_name("sa"),
            metadata={**meta, "name": name, "annotations": annotations},
            opts=self.child_opts(),
        )
        env = [
            {"name": key, "value_from": {"secret_key_ref": {"name": secret.metadata["name"], "key": key}}}
            for key in data
            if key != "basic_auth.ini"
        ]
        env.append({"name": "MLFLOW_AUTH_CONFIG_PATH", "value": "/etc/mlflow/basic_auth.ini"})
        if args.s3_endpoint_url:
            env.append({"name": "MLFLOW_S3_ENDPOINT_URL", "value": args.s3_endpoint_url})
        artifacts = pulumi.Output.concat("s3://", args.artifact_bucket, "/mlflow")
        k8s.apps.v1.Deployment(
            self.child_name("server"),
            metadata={**meta, "name": name},
            spec={
                "replicas": args.replicas,
                "selector": {"match_labels": app},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "service_account_name": account.metadata["name"],
                        "security_context": {"run_as_non_root": True, "run_as_user": 1000},
                        "containers": [
                            {
                                "name": "mlflow",
                                "image": args.image,
                                "args": [
                                    "mlflow",
                                    "server",
                                    "--host",
                                    "0.0.0.0",
                                    "--port",
                                    str(PORT),
                                    "--backend-store-uri",
                                    "$(MLFLOW_BACKEND_STORE_URI)",
                                    "--serve-artifacts",
                                    "--artifacts-destination",
                                    artifacts,
                                    "--app-name",
                                    "basic-auth",
                                ],
                                "ports": [{"name": "http", "container_port": PORT}],
                                "env": env,
                                "volume_mounts": [
                                    {"name": "auth", "mount_path": "/etc/mlflow", "read_only": True}
                                ],
                                "readiness_probe": {"http_get": {"path": "/health", "port": "http"}},
                                "security_context": {
                                    "allow_privilege_escalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                            }
                        ],
                        "volumes": [
                            {
                                "name": "auth",
                                "secret": {
                                    "secret_name": secret.metadata["name"],
                                    "items": [{"key": "basic_auth.ini", "path": "basic_auth.ini"}],
                                },
                            }
                        ],
                    },
                },
            },
            opts=self.child_opts(),
        )
        service = k8s.core.v1.Service(
            self.child_name("service"),
            metadata={**meta, "name": name},
            spec={"selector": app, "ports": [{"name": "http", "port": 80, "target_port": "http"}]},
            opts=self.child_opts(),
        )
        # pulumi.com/skipAwait: the provider then neither waits for nor checks the load-balancer
        # address; set only where no controller will ever write one (await_ingress: false)
        no_wait = {} if args.await_ingress else {"annotations": {"pulumi.com/skipAwait": "true"}}
        k8s.networking.v1.Ingress(
            self.child_name("ingress"),
            metadata={**meta, "name": name, **no_wait},
            spec={
                "ingress_class_name": args.ingress_class,
                "tls": [{"hosts": [args.hostname], "secret_name": args.tls_secret}],
                "rules": [
                    {
                        "host": args.hostname,
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "path_type": "Prefix",
                                    "backend": {
                                        "service": {
                                            "name": service.metadata["name"],
                                            "port": {"name": "http"},
                                        }
                                    },
                                }
                            ]
                        },
                    }
                ],
            },
            opts=self.child_opts(),
        )
        self.url = pulumi.Output.from_input(args.tracking_uri or f"https://{args.hostname}")
        self.service = service.metadata["name"]
        self.register_outputs({"url": self.url, "service": self.service})
