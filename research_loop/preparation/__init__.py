"""The build step of `python prepare.py`: read a source, split off the blind holdout, write data/.

sources.py reads the rows (Task 7 CSVs, token<TAB>tag folders, Hugging Face datasets, the organisers'
download, auxiliary sets); splits.py splits and counts them and writes the split files; task_card.py
writes data/task.md, what the agent is told about the task; build.py runs it all-or-nothing, writes the
holdout gold and the prepared stamp into the cache, and holds the command line.

No job runs any of this: the fixed prepare.py keeps only the API that train.py and the loop read.
"""
