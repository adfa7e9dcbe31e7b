"""Test setup: the tests folder is importable (shared helpers such as refweights.py), and torch
uses few threads so that the suite behaves on a 2-core machine."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))
