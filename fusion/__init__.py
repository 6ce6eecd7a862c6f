"""Frozen encoders, the latent cache, FuseMix adapters, training and retrieval metrics.

Imports neither gradio nor `generator`.
"""
