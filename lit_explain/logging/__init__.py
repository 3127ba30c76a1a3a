"""Logging of explanation pictures and scalars to the Trainer's loggers."""

from .images import log_images, log_scalars

__all__ = ["log_images", "log_scalars"]
