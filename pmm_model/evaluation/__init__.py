"""Ranking a gallery: features, distances, re-ranking and the CMC/mAP/mINP metrics."""
