"""One night, start to end: what is checked before anything is created (preflight), opening it (folders,
lock, files, branch, baseline commit), recovery after a kill, the scheduler's event loop and its session,
stopping, and what the screen and `status` show while it runs."""
