"""Targets. Each backend takes a `Program` and returns outputs as NumPy
arrays, writing updates into the params; none reaches into another."""
