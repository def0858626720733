"""Experiment configs the package itself needs (they ship in the wheel): the MNIST classifier
that the image judge (`jaxnets.evaluators.image_judge`) uses to score generated digits. `experiments/` holds the
rest and re-exports these."""
