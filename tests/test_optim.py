"""The optimiser (recsys.train.optim): MixedAdam against torch's Adam and SparseAdam run
separately, lazy rows, and a checkpoint round trip that continues bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recsys.train.optim import MixedAdam, RowAdam, adam_for


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Parameter(torch.randn(12, 4))
        self.head = nn.Linear(4, 1)

    def loss(self, step: int) -> torch.Tensor:
        index = torch.tensor([1, 3, 3, step % 5])  # rows 5..11 never read
        return self.head(F.embedding(index, self.table, sparse=True)).pow(2).sum()


def train(model: Tiny, optimizer, steps: range) -> None:
    for step in steps:
        optimizer.zero_grad()
        model.loss(step).backward()
        optimizer.step()


def test_mixed_adam_is_adam_on_dense_and_sparse_adam_on_sparse_parameters():
    model, reference = Tiny(), Tiny()
    mixed = adam_for(model, [model.table], lr=0.05, weight_decay=0.0)
    assert isinstance(mixed, MixedAdam)
    dense = torch.optim.Adam(reference.head.parameters(), lr=0.05, fused=True)
    lazy = torch.optim.SparseAdam([reference.table], lr=0.05)
    train(model, mixed, range(4))
    for step in range(4):
        dense.zero_grad()
        lazy.zero_grad()
        reference.loss(step).backward()
        dense.step()
        lazy.step()
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(model.table[5:], Tiny().table[5:])  # rows never read never move


def test_a_reloaded_mixed_adam_continues_as_the_uninterrupted_one():
    whole, first = Tiny(), Tiny()
    train(whole, adam_for(whole, [whole.table], 0.05, 0.0), range(6))
    optimizer = adam_for(first, [first.table], 0.05, 0.0)
    train(first, optimizer, range(3))
    saved_model, saved_state = copy.deepcopy(first.state_dict()), optimizer.state_dict()
    second = Tiny()
    second.load_state_dict(saved_model)
    again = adam_for(second, [second.table], 0.05, 0.0)
    again.load_state_dict(saved_state)
    train(second, again, range(3, 6))
    for got, want in zip(second.parameters(), whole.parameters(), strict=True):
        assert torch.equal(got, want)


def test_no_sparse_tables_is_plain_fused_adam_and_weight_decay_is_refused_with_them():
    model = Tiny()
    assert type(adam_for(model, [], 0.01, 0.1)) is torch.optim.Adam
    with pytest.raises(ValueError, match="weight_decay"):
        adam_for(model, [model.table], 0.01, 0.1)


def test_row_adam_is_torchs_sparse_adam_bit_for_bit_and_shares_its_state():
    """Many rows, repeated and unread ones, uneven gradients, maximize, an lr changed on
    the way, and a SparseAdam checkpoint continued by RowAdam (and back)."""
    torch.manual_seed(1)
    start = torch.randn(500, 16)
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    row_adam = RowAdam([ours], lr=0.01, maximize=True)
    sparse_adam = torch.optim.SparseAdam([theirs], lr=0.01, maximize=True)
    for step in range(12):
        index = torch.randint(0, 400, (300,))  # duplicates; rows 400.. never read
        grad_out = torch.randn(300, 16) * 10.0 ** torch.randint(-3, 3, (300, 1))
        for param in (ours, theirs):
            param.grad = None
            F.embedding(index, param, sparse=True).backward(grad_out)
        if step == 6:  # a scheduler's change, and each optimiser resumed from the other's state
            for opt in (row_adam, sparse_adam):
                opt.param_groups[0]["lr"] = 0.003
            state_theirs, state_ours = sparse_adam.state_dict(), row_adam.state_dict()
            row_adam.load_state_dict(copy.deepcopy(state_theirs))
            sparse_adam.load_state_dict(copy.deepcopy(state_ours))
        row_adam.step()
        sparse_adam.step()
        assert torch.equal(ours, theirs), step
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(row_adam.state[ours][key], sparse_adam.state[theirs][key])
    assert torch.equal(ours[400:], start[400:])
    assert not torch.equal(ours[:400], start[:400])
