"""Re-identification data: dataset layouts, the synthetic set, samplers and transforms."""
