"""Experiment configs the package itself needs (they ship in the wheel): the MNIST classifier
that `jaxnets.images.ImageJudge` trains to score generated digits. `experiments/` holds the
rest and re-exports these."""
