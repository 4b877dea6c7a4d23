"""Search: queries, fusion, calibration, re-ranking, REST API and evaluation."""
