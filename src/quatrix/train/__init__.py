"""Training stages: one module per stage, shared helpers in common.py."""
