"""MSDM Studio inference engine: one multi-source diffusion model that generates,
imputes and separates the stems of a track (Mariani et al., ICLR 2024)."""

__version__ = "0.1.0"
