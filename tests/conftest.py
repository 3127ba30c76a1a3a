"""Test-wide settings: one intra-op thread (the tests use tiny tensors, where thread
hand-offs cost more than they save on a 2-core machine), and offline W&B."""

import os

import torch

torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
