"""Ray resource names the orchestrator and the cluster configs agree on."""

# A custom resource held by each trial's driver (the Tune function trainable, which only waits):
# the head node offers as many as trials may run at once, worker nodes offer none.
DRIVER_RESOURCE = "TRAIN_DRIVER"
