"""The MLflow side: run ownership, plain REST, the embedded default's local server, journals a
job left behind, the reachability probe, dataset lineage. Knows no target and no CLI."""
