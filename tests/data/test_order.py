import numpy as np

from quatrix.data.order import EpochOrder


def test_ranks_split_each_global_batch_and_epochs_reshuffle():
    ranks = [EpochOrder(10, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    first_epoch = [np.concatenate([o.next() for o in ranks]) for _ in range(2)]  # 2 global batches of 4
    seen = np.concatenate(first_epoch)
    assert len(set(seen.tolist())) == 8  # no position twice within an epoch; the ragged 2 are dropped
    third = np.concatenate([o.next() for o in ranks])  # 8 + 4 > 10: a new epoch, a new order
    assert ranks[0].epoch == 1 and not np.array_equal(third, first_epoch[0])


def test_a_resumed_order_continues_exactly():
    a = EpochOrder(7, 3, seed=4)
    for _ in range(3):
        a.next()
    b = EpochOrder(7, 3, seed=4)
    b.load_state_dict(a.state_dict())
    assert all(np.array_equal(a.next(), b.next()) for _ in range(10))
