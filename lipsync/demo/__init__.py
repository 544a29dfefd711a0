"""Synthetic talking faces and the laptop-sized demo pipeline."""
