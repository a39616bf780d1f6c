"""Small shared utilities (no nerfstudio imports)."""
