"""absl binaries: `python -m experiments.evaluate`, ... (thin mains over flatl2o)."""
