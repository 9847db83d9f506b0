"""Shipped robot descriptions (MJCF) and twin configs (TOML)."""
