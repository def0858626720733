"""DDPM on MNIST-5k (4,000 real training digits): a small U-Net noise predictor trained with
Algorithm 1, EMA weights, sampled with DDIM (or Algorithm 2) as one compiled loop.

Three conditionings, one config (arg `class` is the default):
    jaxnets train --config experiments/ddpm_mnist.py:smoke --workdir runs/ddpm_class
    jaxnets train --config experiments/ddpm_mnist.py:smoke,text --workdir runs/ddpm_text
    jaxnets train --config experiments/ddpm_mnist.py:smoke,uncond --workdir runs/ddpm_uncond
Runtime (smoke): about 6-9 minutes each on a 2-core CPU (first run: +1 minute for the judge
classifier of experiments/mnist_cnn.py:smoke, trained into runs/mnist_judge).
Expected (class, smoke): eval/class_accuracy >= 0.9 (samples at guidance 3 classified as the
requested digit by the judge), guidance_sweep.png rows turn from random digits (scale 0, the
unconditional model) into the requested ones; text: the same for prompts "a handwritten seven"
(eval/class_accuracy) and eval/unseen_template_class_accuracy for an unseen phrasing.
Options: `sampler=ddpm` (Algorithm 2, all T steps), `schedule=linear`, `guidance=W`.
Full: drop `smoke` (wider U-Net, more steps).
"""
from jaxnets.config import parse_arg
from jaxnets.train.defaults import base_config


def get_config(arg=None):
    args = parse_arg(arg)
    smoke = bool(args.get("smoke"))
    conditioning = "text" if args.get("text") else None if args.get("uncond") else "class"
    c = base_config()
    c.task = "diffusion"
    c.model = {"name": "unet", "channels": 16 if smoke else 32, "channel_mults": (1, 2, 2),
               "attention": True, "conditioning": conditioning}
    c.task_options = {
        "schedule": args.get("schedule", "cosine"), "num_steps": 400, "p_uncond": 0.1,
        "ema_decay": 0.995 if smoke else 0.999,
        "sampler": args.get("sampler", "ddim"), "sample_steps": 40, "eta": 0.0, "clip_x0": 1.0,
        "guidance": args.get("guidance", 3.0), "guidance_scales": (0.0, 1.0, 3.0, 5.0),
        "num_samples": 200, "judge_dir": args.get("judge_dir", "runs/mnist_judge"),
    }
    c.data.name = "mnist5k"
    c.data.batch_size = 64
    c.data.eval_batch_size = 512
    c.optim.name = "adam"
    c.optim.lr = 2e-3 if smoke else 1e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 100
    c.optim.clip_norm = 1.0
    c.train.steps = args.get("steps", 2000 if smoke else 10000)
    c.train.log_every = 50
    c.train.eval_every = c.train.steps
    c.train.checkpoint_every = c.train.steps
    return c
