"""The overnight loop's machinery: agents, guard, runner, acceptance, ledger, state, git, report."""
