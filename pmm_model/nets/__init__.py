"""The networks (PMM and the BoT-style baseline) and their losses."""
