"""Lesion- and patient-level evaluation (the papers metrics), comparison and plots."""
