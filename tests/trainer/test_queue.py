"""The cross-batch queue: FIFO order across wrap-around, counted fill, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from trainer.queue import CrossBatchQueue


def _rows(start: int, count: int, dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings whose rows carry their global index, labels alternating from index parity."""
    index = torch.arange(start, start + count, dtype=torch.float32)
    return index[:, None].expand(count, dim).clone(), torch.arange(start, start + count) % 2


def test_fifo_order_and_fill_with_batches_that_do_not_divide_the_size():
    queue = CrossBatchQueue(size=10, dim=2)
    assert len(queue) == 0
    seen = 0
    for count, expected_fill in [(3, 3), (4, 7), (7, 10), (3, 10), (4, 10)]:
        queue.enqueue(*_rows(seen, count))
        seen += count
        assert len(queue) == expected_fill
        embeddings, labels = queue.contents()
        newest = torch.arange(seen - expected_fill, seen)
        assert torch.equal(embeddings[:, 0], newest.float())  # oldest first
        assert torch.equal(labels, newest % 2)


def test_batch_larger_than_the_queue_keeps_the_newest_rows():
    queue = CrossBatchQueue(size=4, dim=2)
    queue.enqueue(*_rows(0, 3))
    queue.enqueue(*_rows(3, 9))
    embeddings, labels = queue.contents()
    assert len(queue) == 4
    assert torch.equal(embeddings[:, 0], torch.arange(8, 12).float())
    assert torch.equal(labels, torch.arange(8, 12) % 2)


def test_label_zero_entries_count_as_filled():
    # XBM infers fullness from the last label != 0; with spoof = 0 that is wrong.
    queue = CrossBatchQueue(size=6, dim=3)
    queue.enqueue(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    embeddings, labels = queue.contents()
    assert len(queue) == 4 and embeddings.shape == (4, 3) and labels.tolist() == [0, 0, 0, 0]


def test_size_zero_is_disabled():
    queue = CrossBatchQueue(size=0, dim=3)
    queue.enqueue(torch.randn(5, 3), torch.ones(5, dtype=torch.long))
    embeddings, labels = queue.contents()
    assert len(queue) == 0 and embeddings.shape == (0, 3) and labels.shape == (0,)


def test_enqueue_stores_detached_float32_copies():
    queue = CrossBatchQueue(size=8, dim=3)
    source = torch.randn(2, 3, requires_grad=True)
    queue.enqueue((source * 2).bfloat16(), torch.tensor([True, False]))
    embeddings, labels = queue.contents()
    assert not embeddings.requires_grad and embeddings.dtype == torch.float32
    assert labels.dtype == torch.long and labels.tolist() == [1, 0]
    with torch.no_grad():
        source.add_(100.0)
    assert embeddings.abs().max() < 50  # a copy, not a view of the caller's tensor
    embeddings.add_(1.0)
    assert not torch.equal(queue.contents()[0], embeddings)  # contents() hands out copies


def test_state_dict_round_trip_is_exact():
    queue = CrossBatchQueue(size=10, dim=4)
    for count in (3, 4, 7):
        queue.enqueue(torch.randn(count, 4), torch.randint(0, 2, (count,)))
    restored = CrossBatchQueue(size=10, dim=4)
    restored.load_state_dict(queue.state_dict())
    assert len(restored) == len(queue)
    for got, want in zip(restored.contents(), queue.contents(), strict=True):
        assert torch.equal(got, want)
    batch = (torch.randn(5, 4), torch.randint(0, 2, (5,)))
    queue.enqueue(*batch)
    restored.enqueue(*batch)  # the pointer came back too: both continue identically
    for got, want in zip(restored.contents(), queue.contents(), strict=True):
        assert torch.equal(got, want)


def test_load_state_dict_rejects_a_different_size():
    state = CrossBatchQueue(size=10, dim=4).state_dict()
    with pytest.raises(ValueError, match=r"queue\.size"):
        CrossBatchQueue(size=12, dim=4).load_state_dict(state)


def test_wrong_shapes_are_rejected():
    queue = CrossBatchQueue(size=4, dim=3)
    with pytest.raises(ValueError, match="embeddings"):
        queue.enqueue(torch.randn(2, 5), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        queue.enqueue(torch.randn(2, 3), torch.zeros(3))
