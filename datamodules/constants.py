"""Constants shared by the data pipeline and the models."""

PAD_ID = 0
"""Id of the padding item and the padding user; real ids start at 1."""

NUM_NEGATIVE_CANDIDATES = 19
"""Negatives drawn per evaluation list: 1 positive + 19 negatives (the A-LLMRec protocol)."""
