"""Plain pulumi_aws / pulumi_kubernetes resources that break every rule of the policy pack.

Nothing here uses hybridml components: the rules judge resources by type, whoever declares
them. tests/policies/test_badstack.py expects exactly the rule ids noted on each resource.
"""

import json

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

env = pulumi.Config().require("environment")
tags = {"team": "ml", "cost-center": "cc-1", "environment": env}
labels = dict(tags)

# required-tags (no tags), s3-bucket-kms-encryption, s3-dataset-versioning, s3-tls-only,
# s3-public-access-blocked (public ACL, no block); lifecycle breaks limits and hygiene.
datasets = aws.s3.Bucket("datasets", acl="public-read")
aws.s3.BucketLifecycleConfiguration(
    "datasets-lifecycle",
    bucket=datasets.id,
    rules=[
        {
            "id": "keep-forever",
            "status": "Enabled",
            "filter": {"prefix": ""},
            "transitions": [{"days": 500, "storage_class": "GLACIER"}],
            "expiration": {"days": 4000},
        }
    ],
)
aws.s3.BucketServerSideEncryptionConfiguration(
    "datasets-sse",
    bucket=datasets.id,
    rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
)

# s3-retention-plan and s3-cold-tier: no lifecycle at all.
scratch = aws.s3.Bucket("scratch", tags=tags)
aws.s3.BucketPublicAccessBlock(
    "scratch-pab",
    bucket=scratch.id,
    block_public_acls=True,
    block_public_policy=True,
    ignore_public_acls=True,
    restrict_public_buckets=False,
)

aws.kms.Key("key", enable_key_rotation=False, tags=tags)  # kms-key-rotation
aws.secretsmanager.Secret("db", tags=tags)  # secrets-manager-cmk
aws.iam.Policy(
    "admin",
    tags=tags,
    policy=json.dumps(
        {  # iam-no-wildcard-admin
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
    ),
)

# gpu-nodepool-max-size, gpu-nodes-tainted, gpu-spot-outside-production,
# gpu-instance-types-allowed.
aws.eks.NodeGroup(
    "gpu",
    cluster_name="ml",
    node_role_arn="arn:aws:iam::123456789012:role/nodes",
    subnet_ids=["subnet-1"],
    instance_types=["p5.48xlarge"],
    ami_type="AL2_x86_64_GPU",
    capacity_type="ON_DEMAND",
    tags=tags,
    scaling_config={"min_size": 0, "max_size": 100, "desired_size": 0},
)
# gpu-ondemand-in-production (advisory): production capacity on spot.
aws.eks.NodeGroup(
    "gpu-prod",
    cluster_name="ml",
    node_role_arn="arn:aws:iam::123456789012:role/nodes",
    subnet_ids=["subnet-1"],
    instance_types=["g5.xlarge"],
    ami_type="AL2_x86_64_GPU",
    capacity_type="SPOT",
    tags={**tags, "environment": "production"},
    taints=[{"key": "nvidia.com/gpu", "effect": "NO_SCHEDULE"}],
    scaling_config={"min_size": 0, "max_size": 2, "desired_size": 0},
)
# ec2-imdsv2-required.
aws.ec2.LaunchTemplate("runner", image_id="ami-1", instance_type="t3.micro", tags=tags)
# sg-no-public-ssh and sg-public-ingress-restricted.
aws.ec2.SecurityGroup(
    "ssh",
    vpc_id="vpc-1",
    tags=tags,
    ingress=[{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}],
)
# budget-alert-thresholds; with no subscriber it also leaves budget-for-gpu-stacks unmet.
aws.budgets.Budget(
    "gpu-budget",
    budget_type="COST",
    limit_amount="100",
    limit_unit="USD",
    time_unit="MONTHLY",
    tags=tags,
    notifications=[
        {
            "comparison_operator": "GREATER_THAN",
            "threshold": 80,
            "threshold_type": "PERCENTAGE",
            "notification_type": "ACTUAL",
        }
    ],
)

# k8s-rbac-no-wildcard and k8s-no-cluster-admin-binding.
k8s.rbac.v1.Role(
    "everything",
    metadata={"labels": labels},
    rules=[{"api_groups": ["*"], "resources": ["*"], "verbs": ["*"]}],
)
k8s.rbac.v1.ClusterRoleBinding(
    "admins",
    metadata={"labels": labels},
    role_ref={"api_group": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
    subjects=[{"kind": "Group", "name": "data-scientists", "api_group": "rbac.authorization.k8s.io"}],
)
# no-plaintext-secrets: a password in a ConfigMap.
k8s.core.v1.ConfigMap("settings", metadata={"labels": labels}, data={"DB_PASSWORD": "hunter2hunter2"})
# workload-env-secret-refs and tracking-server-auth.
k8s.apps.v1.Deployment(
    "mlflow",
    metadata={"labels": labels},
    spec={
        "selector": {"match_labels": {"app": "mlflow"}},
        "template": {
            "metadata": {"labels": {"app": "mlflow"}},
            "spec": {
                "containers": [
                    {
                        "name": "mlflow",
                        "image": "ghcr.io/mlflow/mlflow:v2.16.0",
                        "command": ["mlflow", "server", "--host", "0.0.0.0"],
                        "env": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": "s3cr3t-value"}],
                    }
                ]
            },
        },
    },
)
# A multi-language component: its children appear only at deploy time (reported as a note).
pulumi.ComponentResource("eks:index:Cluster", "remote-cluster", {}, remote=True)
