"""Send images and scalars to every logger a Trainer has: TensorBoard, W&B, or PNG files.

TensorBoard gets image summaries (PNG); W&B gets ``wandb.Image`` lists with captions
(uint8 HWC: W&B casts to uint8 without rescaling); MLflow gets images with a key and a step
(``MlflowClient.log_image``: artifacts under ``images/`` that its UI shows per step); any
other logger, or none, gets PNG files under its log directory. Scalars go to TensorBoard as
one summary per call (every value in one event, as ``add_scalar`` writes each) and to every
other logger through ``log_metrics`` (MLflow: metrics).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary

from ..viz.png import encode_png, write_png


def _is_wandb(logger: Logger) -> bool:
    return type(logger).__name__ == "WandbLogger"


def _is_mlflow(logger: Logger) -> bool:
    return type(logger).__name__ == "MLFlowLogger"


def image_directory(logger: Logger | None, default_root: str) -> str:
    """Where PNG files go for a logger that cannot take images (or for no logger)."""
    base = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or default_root
    return os.path.join(base, "explain")


def log_images(loggers: Sequence[Logger], tag: str, images: Sequence[np.ndarray], step: int,
               captions: Sequence[str] | None = None, default_root: str = ".") -> None:
    """Log uint8 HWC RGB ``images`` under ``tag`` at ``step`` to each logger.

    With no logger at all the images are written as PNG files under ``default_root``;
    Lightning's ``DummyLogger`` (``fast_dev_run``) gets none.
    """
    for logger in loggers or [None]:
        if isinstance(logger, DummyLogger):  # (fast_dev_run's: it keeps nothing)
            continue
        if isinstance(logger, TensorBoardLogger):
            for index, image in enumerate(images):
                name = _prefixed(logger, tag if len(images) == 1 else f"{tag}/{index}")
                add_png_summary(logger.experiment, name, image, step)
        elif logger is not None and _is_wandb(logger):
            logger.log_image(key=tag, images=list(images), step=step,
                             caption=list(captions) if captions else [tag] * len(images))
        elif logger is not None and _is_mlflow(logger):
            for index, image in enumerate(images):
                name = tag if len(images) == 1 else f"{tag}/{index}"
                key = re.sub(r"[^A-Za-z0-9_./ -]+", "_", name)  # what MLflow's keys allow
                logger.experiment.log_image(logger.run_id, image, key=key, step=step)
        else:
            directory = image_directory(logger, default_root)
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)
            for index, image in enumerate(images):
                suffix = "" if len(images) == 1 else f"_{index}"
                path = os.path.join(directory, f"{safe}{suffix}_step{step:06d}.png")
                os.makedirs(directory, exist_ok=True)
                write_png(path, image)


def add_png_summary(writer: object, tag: str, image: np.ndarray, step: int) -> None:
    """What ``SummaryWriter.add_image`` writes, PNG-encoded fast: the pictures are flat
    colour cells, which compress well at zlib level 1 (:func:`~lit_explain.viz.encode_png`;
    encoding them is the largest cost of logging them)."""
    height, width, channels = image.shape
    summary = Summary(value=[Summary.Value(tag=tag, image=Summary.Image(
        height=height, width=width, colorspace=channels,
        encoded_image_string=encode_png(image, compress_level=1)))])
    writer._get_file_writer().add_summary(summary, step)


def log_scalars(loggers: Sequence[Logger], values: dict[str, float], step: int) -> None:
    """Log scalar ``values`` to every logger.

    TensorBoard gets them in one ``Summary`` (:func:`add_scalar_summary`): the values
    ``TensorBoardLogger.log_metrics`` would write, under the same (prefixed) tags, in one
    event instead of one event per value. Other loggers get ``log_metrics``.
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            add_scalar_summary(logger, values, step)
        else:
            logger.log_metrics(values, step=step)


def _prefixed(logger: TensorBoardLogger, tag: str) -> str:
    """``tag`` as ``TensorBoardLogger.log_metrics`` names it (after the logger's ``prefix``)."""
    prefix = getattr(logger, "_prefix", "")
    return f"{prefix}{getattr(logger, 'LOGGER_JOIN_CHAR', '-')}{tag}" if prefix else tag


def add_scalar_summary(logger: TensorBoardLogger, values: dict[str, float], step: int) -> None:
    """Write ``values`` as one TensorBoard summary event at ``step``.

    Each value is what ``SummaryWriter.add_scalar`` writes (a ``simple_value``), under the
    tag ``TensorBoardLogger.log_metrics`` gives it (with the logger's ``prefix``); one
    event holds them all, which TensorBoard reads as one point per tag. On a rank other
    than zero nothing is written, as with ``log_metrics``.
    """
    if rank_zero_only.rank != 0 or not values:
        return
    summary = Summary(value=[Summary.Value(tag=_prefixed(logger, tag), simple_value=float(value))
                             for tag, value in values.items()])
    logger.experiment._get_file_writer().add_summary(summary, step)
