"""astra: interactive world models by autoregressive denoising (Astra, ICLR 2026)."""

__version__ = "0.1.0"
