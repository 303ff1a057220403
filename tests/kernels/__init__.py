"""Tests of the simulated kernels (flash forward/backward here; others beside them)."""
