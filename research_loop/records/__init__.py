"""What a night leaves: results.tsv (ledger, run_record), recording a decision (recorder), CURRENT_STATE.md,
the git steps, the protected files, and MLflow tracking."""
