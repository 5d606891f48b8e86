"""What the runner keeps on disk under ``$HML_HOME``: paths, run records, the supervisor lock.
Standard library only, so every command can read it without loading the rest."""
