"""The model lab: bundled digits, the built-in tiny Stable Diffusion, pretraining and fine-tuning recipes."""
