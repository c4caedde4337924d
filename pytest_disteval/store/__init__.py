"""The stores under the disteval dir: results per (model, task entry) and per-document samples."""
