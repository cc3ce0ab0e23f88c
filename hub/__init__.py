"""Pretrained DiM generators bundled with synthsets, one Hub-style model repo per folder."""
