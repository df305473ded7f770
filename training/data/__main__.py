"""`python -m training.data fetch|build_vocab [--flags]` (training/data/download.py)."""

import sys

from training.data import download

sys.exit(download.main())
