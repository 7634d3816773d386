"""astra.vae"""
