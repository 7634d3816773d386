"""astra.diffusion"""
