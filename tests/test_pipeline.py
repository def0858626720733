import numpy as np

from jaxnets.data.pipeline import TrainIterator, eval_batches


def _split(n=23):
    return {"x": np.arange(n) * 10, "y": np.arange(n)}


def test_every_example_once_per_epoch_and_deterministic():
    it = TrainIterator(_split(), batch_size=5, seed=3)
    seen = np.concatenate([it.batch(s)["y"] for s in range(23)])  # 115 = 5 epochs of 23
    for e in range(5):
        assert sorted(seen[e * 23:(e + 1) * 23]) == list(range(23))
    again = TrainIterator(_split(), batch_size=5, seed=3)
    assert np.array_equal(np.concatenate([next(again)["y"] for _ in range(23)]), seen)
    other = TrainIterator(_split(), batch_size=5, seed=4)
    assert not np.array_equal(other.batch(0)["y"], it.batch(0)["y"])
    batch = it.batch(7)
    assert np.array_equal(batch["x"], batch["y"] * 10)


def test_resume_state_and_process_shares():
    it = TrainIterator(_split(), batch_size=8, seed=0)
    for _ in range(5):
        next(it)
    resumed = TrainIterator(_split(), batch_size=8, seed=0)
    resumed.set_state(it.get_state())
    assert np.array_equal(next(resumed)["y"], next(it)["y"])
    # Two processes' shares, concatenated, are the global batch.
    shares = [TrainIterator(_split(), batch_size=8, seed=0, process_index=p, process_count=2)
              for p in range(2)]
    for step in range(6):
        glob = TrainIterator(_split(), batch_size=8, seed=0).batch(step)["y"]
        assert np.array_equal(np.concatenate([s.batch(step)["y"] for s in shares]), glob)


def test_eval_batches_pad_and_mask():
    batches = list(eval_batches(_split(23), batch_size=10))
    assert [b["y"].shape[0] for b in batches] == [10, 10, 10]
    mask = np.concatenate([b["mask"] for b in batches])
    ys = np.concatenate([b["y"] for b in batches])
    assert mask.sum() == 23 and np.array_equal(ys[mask == 1], np.arange(23))


def test_worker_processes_give_the_same_batches_and_eval_pass():
    """Grain worker processes (mp_prefetch) change who decodes, never what: batches from step
    3 on with 2 workers and a per-example host transform equal the in-process reference."""
    from jaxnets.data.source import ArraySource

    def reference(step):   # the transform by hand: x + a draw seeded by (seed, global position)
        it = TrainIterator(_split(), batch_size=6, seed=1)
        g = step * 6 + np.arange(6)
        return it.batch(step)["x"] + [np.random.default_rng([1, int(p)]).integers(100) for p in g]

    it = TrainIterator(ArraySource(_split()), batch_size=6, seed=1, start_step=3,
                       transform=_add_noise, workers=2, stop_step=9)
    got = [next(it)["x"] for _ in range(6)]
    it.close()
    assert it.examples_read == 36 and it.get_state()["step"] == 9
    for step, batch in zip(range(3, 9), got):
        assert np.array_equal(batch, reference(step))
    shares = [list(eval_batches(_split(23), batch_size=10, process_index=p, process_count=2,
                                workers=1)) for p in range(2)]
    ys = np.concatenate([b["y"][b["mask"] == 1] for share in shares for b in share])
    assert sorted(ys.tolist()) == list(range(23))


def _add_noise(record, rng):   # module level: pickled into the worker processes
    return {"x": record["x"] + rng.integers(100), "y": record["y"]}


def test_order_is_numpy_permutation_of_seed_and_epoch():
    """The documented order, from an independent formula: example j of batch s is
    default_rng([seed, epoch]).permutation(n)[g % n], g = s * batch + j."""
    it = TrainIterator(_split(23), batch_size=5, seed=7)
    for step in (0, 4, 9):
        g = step * 5 + np.arange(5)
        want = [np.random.default_rng([7, int(x) // 23]).permutation(23)[int(x) % 23] for x in g]
        assert np.array_equal(it.indices(step), want)
