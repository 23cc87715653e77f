"""The execution layer: executors (a registry like methods and datasets), submitit behind
an adapter, what a submitted job runs on a node, cluster profiles, job states with what
the scheduler says, and running planned sweeps. Training code knows nothing of it."""
