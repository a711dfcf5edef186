"""Running train.py: a trial as a job (dispatch), the job in its workspace and sandbox (jobs, sandbox,
sandbox_init, cgroups), the executors that run jobs here or on Ray, and the check after every run."""
