"""Suite-wide settings: one torch thread. The models here are tiny, and on a shared 2-core machine a
second thread mostly spins while another process holds the other core (measured: 10x slower)."""

import torch

torch.set_num_threads(1)
