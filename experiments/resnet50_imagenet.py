"""ResNet-50 v1.5 on ImageNet (ILSVRC-2012), the standard recipe, read from an image folder
(ROOT/train/CLASS/*.JPEG, ROOT/val/CLASS/*.JPEG) or a prepared TFDS `imagenet2012`.

    jaxnets train --config experiments/resnet50_imagenet.py --config.data.options.root=/data/imagenet --workdir runs/rn50
    jaxnets train --config experiments/resnet50_imagenet.py:tfds --config.data.options.data_dir=/data/tfds --workdir runs/rn50

Recipe: ResNet-50 v1.5 (bottleneck blocks, stride 2 in the 3x3 convolution, projection
shortcuts, the last BN scale of each residual branch initialised to 0), SGD with Nesterov momentum 0.9, peak lr 0.1 per 256 images (0.4 at the global batch
of 1024) after 5 epochs of linear warm-up, cosine decay to 0 over 90 epochs, label smoothing
0.1, weight decay 5e-5 on convolution and dense kernels only (not on norms or biases),
Inception-style random-resized crops of 224 px + flips on the host, resize 256 + centre crop
224 for validation, bf16 compute (parameters float32). Published results for this recipe are
about 76-77% top-1 on the validation set; it has not been run to the end with jaxnets. Sized for
accelerators: 112,590 steps of 1,024 images. Which mesh and how many decoding workers: see
docs/data.md (data parallel over all devices; data.workers about the host's cores per process
minus two). On CPU add --config.train.compute_dtype=float32.

Smoke (`:smoke`, CPU, minutes): the same pipeline and model on a fixture folder,
    python -m jaxnets.data.fixtures imagenet --out /tmp/fixture --images 2000 --classes 10
    jaxnets train --config experiments/resnet50_imagenet.py:smoke --config.data.options.root=/tmp/fixture --workdir runs/rn50_smoke
64 px crops, batch 32, 20 steps, float32. Keys: size (crop side), steps, batch, depth (18, 34,
50), tfds.
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config

IMAGENET_TRAIN_IMAGES = 1_281_167
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # ImageNet per-channel statistics


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = bool(args.get("smoke"))
    size = args.get("size", 64 if smoke else 224)
    batch = args.get("batch", 32 if smoke else 1024)
    c = base_config()
    c.cpu_devices = "auto"          # CPU: one single-threaded device per core (convnets gain)
    c.task = "classification"
    c.task_options = {"label_smoothing": 0.1, "input_mean": MEAN, "input_std": STD}
    c.model = {"name": "resnet", "form": "imagenet", "depth": args.get("depth", 50),
               "zero_init_residual": True}
    if args.get("tfds"):
        c.data.name = "imagenet2012"
        c.data.options = {"data_dir": "", "image_size": size}
        c.data.eval_split = "validation"
    else:
        c.data.name = "image_folder"
        c.data.options = {"root": "", "image_size": size}
        c.data.eval_split = "val"
    c.data.batch_size = batch
    c.data.eval_batch_size = 64 if smoke else 1000
    c.data.workers = 0 if smoke else 8
    c.data.prefetch = 2
    c.optim.name = "momentum"
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.lr = 0.1 * batch / 256
    c.optim.weight_decay = 5e-5
    c.optim.decay_all = False        # kernels only: BN scales/offsets and biases are not decayed
    c.optim.schedule = "warmup_cosine"
    if smoke:
        steps = args.get("steps", 20)
        c.optim.warmup_steps = max(1, steps // 10)
        c.train.steps = steps
        c.train.log_every = max(1, steps // 6)
        c.train.eval_every = steps
        c.train.checkpoint_every = max(1, steps // 3)
        c.train.compute_dtype = "float32"
    else:
        epoch = IMAGENET_TRAIN_IMAGES // batch
        c.optim.warmup_steps = 5 * epoch
        c.train.steps = args.get("steps", 90 * epoch)
        c.train.log_every = 100
        c.train.eval_every = 2 * epoch
        c.train.checkpoint_every = 2000
        c.train.compute_dtype = "bfloat16"
    return c
