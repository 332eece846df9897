"""Synthetic non-contrast liver CT phantom cohorts in nnU-Net raw format."""
