"""The morning report: its data, how far to trust it (intervals, shrinkage, alerts), the text and the plot."""
