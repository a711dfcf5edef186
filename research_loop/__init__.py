"""The overnight loop's machinery: the night (night, loop, scheduler), the sandboxed jobs (jobs, sandbox,
integrity), the evidence (scoring, acceptance, consensus, trust), the memory (records, ledger, state) and the
agents; ARCHITECTURE.md maps every module."""
