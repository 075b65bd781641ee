"""Launchers that start one run on many processes: local, Cloud TPU VMs, SLURM."""
