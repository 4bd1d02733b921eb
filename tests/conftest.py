"""Shared fixtures: small in-repo models and the pretrained all-MiniLM-L6-v2 (loaded once per session)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


class TiedLM(nn.Module):
    """Embedding and output projection share one weight (tied)."""

    def __init__(self, vocab: int = 20, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.body(self.embed(ids))))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy machine its spin-waits cost 10x the work
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A tiny in-repo sentiment set for the framework integrations: 16 short sentences.
SENTIMENT = [("a wonderful, moving film", 1), ("dull and far too long", 0), ("I loved every minute", 1),
             ("the plot makes no sense", 0), ("brilliant acting throughout", 1), ("a boring mess", 0),
             ("funny, warm and clever", 1), ("I want my money back", 0), ("a joy to watch", 1),
             ("painfully slow and flat", 0), ("the best film this year", 1), ("badly written and acted", 0),
             ("charming and heartfelt", 1), ("a tedious waste of time", 0), ("great music and visuals", 1),
             ("nothing works in it", 0)]


@pytest.fixture(scope="session")
def sentiment() -> list[tuple[str, int]]:
    return SENTIMENT


@pytest.fixture
def tied_lm() -> TiedLM:
    torch.manual_seed(0)
    return TiedLM()


@pytest.fixture(scope="session")
def minilm_dir():
    from frostline.models import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def _minilm_pristine(minilm_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir))


@pytest.fixture
def minilm(_minilm_pristine):
    """A fresh copy of the pretrained all-MiniLM-L6-v2 (BertModel) for each test."""
    import copy

    return copy.deepcopy(_minilm_pristine)
