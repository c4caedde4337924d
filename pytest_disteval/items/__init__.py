"""Collection nodes and what they judge: threshold and budget items."""
