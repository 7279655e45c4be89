"""Running a job: the launcher, per-rank status, abort on failure, process clean-up, environment checks and Horovod settings."""
