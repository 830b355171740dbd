"""Default status and priority maps, one YAML per platform (see bridge/mapping.py)."""
