"""DeepLIFT (placeholder while written)."""
