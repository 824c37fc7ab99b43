"""Synthetic defocus data with exact ground truth."""
