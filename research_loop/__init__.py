"""The overnight loop's machinery, a package per stage of the night: cli (the commands), night (preflight,
opening, recovery, the scheduler), proposals, execution (jobs and the sandbox), evaluation (scoring,
diagnostics, acceptance), records (results.tsv, CURRENT_STATE.md, git), report, consensus and agents;
ARCHITECTURE.md maps every module."""
