"""SS-StyleGAN Label app adapters."""
