"""What a run's predictions are worth: the data views train.py sees, scoring with the fixed evaluate.py,
the error breakdown, the acceptance policies, a run's trials, and the blind holdout."""
