"""The settings the trainer reads; every experiment config starts from `base_config()`."""
from __future__ import annotations

import ml_collections

from jaxnets.parallel.sharding import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                                     # every random bit derives from (seed, step)
    c.task = "classification"                      # objective: jaxnets.tasks (`jaxnets list`)
    c.task_options = ml_collections.ConfigDict()   # free-form, read by the task
    c.model = ml_collections.ConfigDict({"name": "cnn"})  # name + constructor keywords

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist5k"                        # dataset: jaxnets.data (`jaxnets list`)
    c.data.options = ml_collections.ConfigDict()   # keywords for the dataset loader
    c.data.train_split = "train"                   # split trained on
    c.data.eval_split = "test"                     # split evaluated ("" = no evaluation)
    c.data.batch_size = 128                        # global batch, over all devices and hosts
    c.data.eval_batch_size = 512                   # global eval batch (the last one is padded and masked)
    c.data.augment = ()                            # e.g. ("crop:4", "flip"), applied by the task
    c.data.prefetch = 2                            # batches prepared ahead (per worker with workers > 0)
    c.data.workers = 0                             # decoding worker processes (Grain mp_prefetch); 0: in-process

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"                         # sgd | momentum | adam | adamw
    c.optim.lr = 1e-3                              # peak learning rate
    c.optim.schedule = "constant"                  # constant | cosine | warmup_cosine | piecewise
    c.optim.warmup_steps = 0                       # linear warm-up (warmup_cosine)
    c.optim.boundaries = ()                        # piecewise: steps where lr is multiplied...
    c.optim.decay_factor = 0.1                     # ...by this factor
    c.optim.momentum = 0.9                         # heavy-ball momentum (name "momentum")
    c.optim.nesterov = False                       # Nesterov momentum
    c.optim.b1 = 0.9                               # Adam beta1
    c.optim.b2 = 0.999                             # Adam beta2
    c.optim.weight_decay = 0.0                     # decoupled (adamw) or L2 (others)
    c.optim.decay_all = False                      # False: decay only weights with ndim > 1
    c.optim.clip_norm = 0.0                        # global-norm clipping; 0 disables
    c.optim.accumulate_steps = 1                   # gradient accumulation (optax.MultiSteps)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000                           # optimizer steps in all
    c.train.log_every = 50                         # train metrics to metrics.jsonl / TensorBoard
    c.train.eval_every = 500                       # evaluate on data.eval_split
    c.train.checkpoint_every = 500                 # orbax checkpoint (async)
    c.train.keep_checkpoints = 3                   # newest N kept
    c.train.compute_dtype = "float32"              # "bfloat16" for mixed precision (GPU/TPU; slower on CPU: docs/cpu_choices.md)
    c.train.param_dtype = "float32"                # parameter storage (jaxnets/tasks/common.py)
    c.train.profile_steps = ()                     # (start, stop): jax.profiler trace in WORKDIR/profile
    c.train.report = True                          # call task.report() at the end
    # Evaluators (jaxnets/evaluators): name -> {"kind": ..., "every": N (0: at the end only), ...}.
    c.evals = ml_collections.ConfigDict()
    c.train.progress = True                        # progress bar when stderr is a terminal
    c.train.max_nonfinite_steps = 5                # stop (exit 3) after this many skipped steps in a row
    c.train.accept_lost_checkpoints = False        # start at step 0 when every checkpoint is damaged
    c.train.restart_data = False                   # resume despite changed data settings: new data order
    c.train.best_metric = ""                       # e.g. "eval/loss": keep the best state in WORKDIR/best/
    c.train.best_mode = "min"                      # min | max: which way best_metric improves
    c.train.early_stopping_patience = 0            # evaluations without improvement before stopping; 0 = never

    # Axis name -> size, -1 fills the rest. data: batch split, parameters replicated; fsdp: batch
    # split and every large parameter (and its optimizer state) sharded along one dimension;
    # tensor: attention heads, MLP hidden units and the vocabulary split (Megatron style).
    # e.g. --config.mesh.fsdp=4 --config.mesh.tensor=2 (data = -1 takes the remaining devices).
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.mesh_devices = 0                             # use the first N devices; 0 = all (1: one device)
    # CPU only: "1" = JAX's one multi-threaded device; "auto" = one single-threaded device per
    # core (as many as divide the batch sizes), "cores" or "N". Faster for convnets, slower for
    # recurrent and small models (jaxnets.platform.devices.auto_cpu_devices). JAXNETS_CPU_DEVICES overrides.
    c.cpu_devices = "1"
    # Logical axis name (on parameters, activations and the batch) -> mesh axis (jaxnets.parallel.sharding).
    c.sharding_rules = DEFAULT_RULES
    # Backend-specific layer choices (jaxnets.platform.lowering_rule), made before anything is traced.
    c.platform = ml_collections.ConfigDict()
    c.platform.lowering = "auto"                   # auto: the backend's rule (CPU: fusion barriers, ...); plain: none
    c.platform.kernel_table = ""                   # JSON from `jaxnets tune`; "" = the fixed rule
    return c
