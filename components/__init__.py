"""Reusable Pulumi components of the hybridml platform, each with an AWS and an on-prem form.

Modules: ``object_store`` (ObjectStore), ``retention`` (RetentionPlan), ``keyvault``
(KeyVault), ``gpu_pool`` and ``inventory`` (GpuNodePool, SSH GPU hosts), ``monitoring``
(Monitoring), ``tracking`` (TrackingServer); ``platform_config``, ``platform`` and
``profile`` compose them into the ``stacks/platform`` program. Nothing is imported here, so
that importing one module does not load every provider SDK.
"""
