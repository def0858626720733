"""CIFAR-10 ResNet / plain net (He et al. 2016, Sec. 4.2), one model per run.

Paper recipe (default arg): SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10
at 32k and 48k iterations, 64k iterations; 4-pixel padded random crop + horizontal flip; 45k/5k
train/validation split of the TFDS cifar10 training set (test error on the 10k test set).
Needs a prepared TFDS cifar10 under $TFDS_DATA_DIR (fails fast otherwise). GPU/TPU sized:
ResNet-56 for 64k steps is about 1-2 hours on one modern GPU, days on a 2-core CPU.
Expected (paper, Fig. 6): test error ResNet-20 8.75%, -56 6.97%; plain-56 above plain-20.

    jaxnets train --config experiments/resnet_cifar.py:depth=56 --workdir runs/resnet56
    jaxnets train --config experiments/resnet_cifar.py:depth=56,residual=False --workdir runs/plain56

Offline variants on MNIST-5k (4,000 train / 1,000 test real digits, 28x28x1):
    mnist   same nets, stem stride 2 (14x14 feature maps), batch 64, 1,500 steps, no augmentation;
            ResNet-20 about 3-5 minutes on a 2-core CPU, test accuracy about 0.98.
    smoke   as mnist with 300 steps (ResNet-20 about 1 minute, measured test accuracy 0.975);
            the degradation benchmark's `smoke` preset trains these.
    jaxnets train --config experiments/resnet_cifar.py:smoke,depth=20 --workdir runs/r20_smoke

Other keys: residual (True), shortcut ('A' parameter-free | 'B' projections), preact (False),
batch_norm (True), steps, lr, width.
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke, mnist = args.get("smoke"), args.get("mnist")   # both read: an unread argument is refused
    offline = bool(smoke or mnist)
    c = base_config()
    # On CPU: one single-threaded device per core, the batch sharded over them (convnets
    # gain; see jaxnets.platform.devices.auto_cpu_devices). Ignored where a GPU/TPU is present.
    c.cpu_devices = "auto"
    c.task = "classification"
    c.model = {"name": "resnet" if args.get("residual", True) else "plainnet",
               "depth": args.get("depth", 20),
               "shortcut": args.get("shortcut", "A"),
               "preact": args.get("preact", False),
               "batch_norm": args.get("batch_norm", True),
               "width": args.get("width", 16)}
    c.optim.name = "momentum"
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.lr = args.get("lr", 0.1)
    c.optim.schedule = "piecewise"
    c.optim.decay_factor = 0.1
    if offline:
        steps = args.get("steps", 300 if smoke else 1500)
        c.model.stem_stride = 2          # 28x28 digits -> 14x14 maps: the same depth, 4x cheaper
        c.data.name = "mnist5k"
        c.data.batch_size = 64
        c.data.eval_batch_size = 512
        c.optim.boundaries = (steps // 2, 3 * steps // 4)
        c.train.steps = steps
        c.train.log_every = max(1, steps // 30)
        c.train.eval_every = max(1, steps // 6)
        c.train.checkpoint_every = steps
    else:
        steps = args.get("steps", 64_000)
        c.data.name = "cifar10"
        c.data.options = {"validation": 5000}
        c.data.augment = ("crop:4", "flip")
        c.data.batch_size = 128
        c.data.eval_batch_size = 1024
        c.optim.boundaries = (steps // 2, 3 * steps // 4)    # 32k, 48k of 64k
        c.train.steps = steps
        c.train.log_every = 100
        c.train.eval_every = 2000
        c.train.checkpoint_every = 2000
    return c
