"""Pallas attention kernels (installed as `wegen_jax.kernels`); see the scale issue."""
