"""The model core: configuration (config), the U-Net (network), EDM preconditioning
and the samplers (diffusion), and the three tasks as conditions on one sampler
(tasks). Knows nothing of files, model formats or front ends."""
