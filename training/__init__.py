"""Data, training and evaluation for MSDM Studio's models."""
