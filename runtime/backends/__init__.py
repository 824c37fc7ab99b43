"""Inference backends behind one interface."""
