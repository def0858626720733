"""DDPM objective (Algorithm 1) with an EMA denoiser, optional class or text conditioning, and a
report that samples with one compiled loop, writes PNG grids and scores the samples.

Config: `model` = {"name": "unet", "conditioning": None|"class"|"text", "channels", ...}.
task_options (defaults in brackets):
- schedule ["cosine"], num_steps [T = 1000]: the beta schedule (jaxnets.ddpm).
- p_uncond [0.1]: probability of replacing the condition with the null one while training,
  so that one network is both eps(x, t, c) and eps(x, t) for classifier-free guidance.
- ema_decay [0.999]: EMA of the weights, warmed up as min(decay, (1 + n) / (10 + n)); eval
  and sampling use the EMA copy.
- sampler ["ddim"], sample_steps [50], eta [0.0], clip_x0 [1.0]: how `report` samples
  ("ddpm" is Algorithm 2 over all T steps), clipping the x0 estimate to the data range.
- guidance [3.0] and guidance_scales [(0, 1, 3, 5)]: the scale scored as eval/class_accuracy
  and the sweep written to guidance_sweep.png (scale 0 is the unconditional model).
- prompt_templates: training prompts; "{word}" / "{digit}" become "seven" / "7". The report
  prompts "a handwritten {word}" (seen in training) and "a drawing of the digit {word}" (a
  template never seen: how far the encoder generalises).
`judged_images` gives the image judge (jaxnets/evaluators, `config.evals`) the scored sets:
unconditional samples, or each guidance scale's samples with the requested digits.
Images are scaled to [-1, 1]. Eval: held-out Algorithm 1 loss of the EMA model, fixed noise.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnets import ddpm as dm
from jaxnets import images as imlib
from jaxnets.errors import UserError
from jaxnets.models import model_options
from jaxnets.models.unet import NUMBER_WORDS, PromptTokenizer
from jaxnets.tasks.base import Inference, State, Task
from jaxnets.tasks.common import (build_task_model, heldout_images, image_model_defaults,
                                  to_unit_range, write_report)

TRAIN_TEMPLATES = ("a handwritten {word}", "the digit {digit}", "the number {word}", "{word}",
                   "a picture of a {word}", "handwritten {digit}", "an image of the digit {word}")
SEEN_PROMPT, UNSEEN_PROMPT = "a handwritten {word}", "a drawing of the digit {word}"


def prompts_for(template: str) -> list[str]:
    return [template.format(word=NUMBER_WORDS[d], digit=d) for d in range(10)]


class DiffusionTask(Task):
    options = {"schedule": "cosine", "num_steps": 1000, "p_uncond": 0.1, "ema_decay": 0.999,
               "sampler": "ddim", "sample_steps": 50, "eta": 0.0, "clip_x0": 1.0, "guidance": 3.0,
               "guidance_scales": (0.0, 1.0, 3.0, 5.0), "num_samples": 200,
               "prompt_templates": TRAIN_TEMPLATES}
    entry_points = frozenset({"sample", "export"})

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        o = self.opts
        self.schedule = dm.make_schedule(o["schedule"], o["num_steps"])
        self.conditioning = {**model_options(config.model.name), **config.model}["conditioning"]
        self.num_classes = dataset.info.get("num_classes", 10)
        self.p_uncond = o["p_uncond"]
        self.ema_decay = o["ema_decay"]
        self.sampler = o["sampler"]
        self.sample_steps, self.eta, self.clip_x0 = o["sample_steps"], o["eta"], o["clip_x0"]
        self.guidance = o["guidance"]
        self.guidance_scales = tuple(o["guidance_scales"])
        self.num_samples = o["num_samples"]    # per scored set, a multiple of 10
        if self.conditioning == "text":
            self.tokenizer = PromptTokenizer()
            templates = o["prompt_templates"]
            # (classes, templates, max_len): the train step picks a random template per example
            self.prompt_table = np.stack([self.tokenizer.encode(prompts_for(t)) for t in templates], 1)

    def build(self, rngs, make_optimizer):
        defaults = image_model_defaults(self.config, self.dataset)
        defaults["num_classes"] = self.num_classes
        model = build_task_model(self.config.model, self.config, rngs, **defaults)
        return State(model=model, opt=make_optimizer(model), ema=nnx.clone(model))

    # ------------------------------------------------------------------ conditions
    def condition(self, model, labels, rng=None):
        """Training (rng given): labels -> conditions with p_uncond of them nulled; eval: all kept."""
        if self.conditioning is None:
            return None
        if self.conditioning == "class":
            cond = labels.astype(jnp.int32)
        else:
            pick = (jax.random.randint(jax.random.fold_in(rng, 1), labels.shape, 0, self.prompt_table.shape[1])
                    if rng is not None else jnp.zeros_like(labels))
            cond = jnp.asarray(self.prompt_table)[labels, pick]
        if rng is None or not self.p_uncond:
            return cond
        drop = jax.random.bernoulli(rng, self.p_uncond, labels.shape)
        null = jnp.broadcast_to(model.null_condition(), cond.shape)
        return jnp.where(drop.reshape(drop.shape + (1,) * (cond.ndim - 1)), null, cond)

    def loss(self, model, batch, rng, train: bool):
        x0 = to_unit_range(batch["image"]) * 2.0 - 1.0
        cond_rng, loss_rng = jax.random.split(rng)
        cond = self.condition(model, batch.get("label"), cond_rng if train else None)
        eps_fn = lambda x, t: model(x, t, cond, train=train)
        return dm.ddpm_loss(self.schedule, eps_fn, x0, loss_rng)

    def train_step(self, state, batch, rng):
        loss, grads = nnx.value_and_grad(lambda m: self.loss(m, batch, rng, True).mean())(state.model)
        state.opt.update(state.model, grads)
        n = state.opt.step[...].astype(jnp.float32)
        dm.ema_update(state.ema, state.model, jnp.minimum(self.ema_decay, (1.0 + n) / (10.0 + n)))
        return {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    def eval_step(self, state, batch):
        losses = self.loss(state.ema, batch, jax.random.key(0), False)
        return {"loss_sum": jnp.sum(losses * batch["mask"]), "count": jnp.sum(batch["mask"])}

    def summarize(self, sums):
        return {"loss": float(sums["loss_sum"] / sums["count"])}

    # ------------------------------------------------------------------ sampling
    def sampler_fn(self, model, n: int, trajectory: bool = False, steps: int | None = None):
        """A jitted (cond, scale, rng) -> images in [0, 1]; the whole chain is one lax.scan.
        trajectory=True: (images, {"t", "x_t", "x0"}) with every step's x_t and predicted x_0.
        steps: DDIM sampling steps (default: task_options.sample_steps)."""
        graphdef, params = nnx.split(model)
        sample = jax.jit(self.sample_program(graphdef, n, trajectory, steps))
        return lambda cond, scale, rng: jax.tree.map(np.asarray, sample(params, cond, jnp.float32(scale), rng))

    def sample_program(self, graphdef, n: int, trajectory: bool = False, steps: int | None = None):
        """The pure (params, cond, scale, rng) -> images of `sampler_fn`, not yet compiled."""
        shape = (n, *self.dataset.info["image_shape"])
        sample_steps = self.sample_steps if steps is None else steps

        def sample(params, cond, scale, rng):
            net = nnx.merge(graphdef, params)
            if self.conditioning is None:
                eps_fn = lambda x, t: net(x, t)
            else:
                null = net.null_condition()
                eps_fn = lambda x, t: dm.guided_eps(lambda x, t, c: net(x, t, c), x, t, cond, null, scale)
            init_rng, chain_rng = jax.random.split(rng)
            x_T = jax.random.normal(init_rng, shape)
            if self.sampler == "ddpm":
                out = dm.ddpm_sample(self.schedule, eps_fn, x_T, chain_rng, clip_x0=self.clip_x0,
                                     trajectory=trajectory)
            else:
                out = dm.ddim_sample(self.schedule, eps_fn, x_T, chain_rng, num_sample_steps=sample_steps,
                                     eta=self.eta, clip_x0=self.clip_x0, trajectory=trajectory)
            to_unit = lambda x: jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)
            if trajectory:
                return to_unit(out[0]), {**out[1], "x_t": to_unit(out[1]["x_t"]), "x0": to_unit(out[1]["x0"])}
            return to_unit(out)

        return sample

    def judged_images(self, state, context):
        """The image judge's sets (jaxnets/evaluators), sampled on the sharded EMA state on every
        process (`context.call`): unconditional samples, or per guidance scale ("w{scale}_",
        with the requested digits when scale > 0), the guidance in use ("") and, for text, an
        unseen prompt template; all compared with held-out digits."""
        graphdef, params = nnx.split(state.ema)
        program = self.sample_program(graphdef, self.num_samples)
        run = lambda cond, scale, seed: context.call(
            lambda p, c, s, k: program(p, c, s, jax.random.wrap_key_data(k)), params, cond,
            np.float32(scale), np.asarray(jax.random.key_data(jax.random.key(seed))))
        if self.conditioning is None:
            return {"": (run(None, 0.0, 1), None, True)}
        labels = np.repeat(np.arange(10), self.num_samples // 10)
        template = SEEN_PROMPT if self.conditioning == "text" else None
        cond = np.asarray(self.conditions_for(state.ema, labels, template))
        sets = {f"w{scale:g}_": (run(cond, scale, 1), labels if scale > 0 else None, True)
                for scale in self.guidance_scales}
        sets[""] = (run(cond, self.guidance, 2), labels, True)
        if self.conditioning == "text":
            unseen = np.asarray(self.conditions_for(state.ema, labels, UNSEEN_PROMPT))
            sets["unseen_template_"] = (run(unseen, self.guidance, 3), labels, True)
        return sets

    def conditions_for(self, model, labels: np.ndarray, template: str | None = None):
        if self.conditioning == "class":
            return jnp.asarray(labels, jnp.int32)
        if self.conditioning == "text":
            return jnp.asarray(self.tokenizer.encode(prompts_for(template))[labels])
        return None

    def sample(self, state, n: int, seed: int = 0, *, steps: int | None = None, guidance: float | None = None,
               label: int | None = None, prompt: str | None = None) -> np.ndarray:
        """n images from the EMA denoiser. Conditioned on class labels: `label` (default digits
        0..9 in turn); on text: `prompt` (default "a handwritten {word}" for 0..9 in turn);
        guidance: the classifier-free guidance scale (default task_options.guidance)."""
        if steps is not None and steps < 1:
            raise UserError(f"The number of sampling steps must be at least 1, got {steps}.")
        model = state.ema
        sample = self.sampler_fn(model, n, steps=steps)
        key = jax.random.key(seed)
        if self.conditioning is None:
            if label is not None or prompt is not None:
                raise UserError("This DDPM is unconditional: drop --label/--prompt.")
            return sample(None, 0.0, key)
        scale = self.guidance if guidance is None else guidance
        digits = np.arange(n) % 10
        if self.conditioning == "class":
            if prompt is not None:
                raise UserError("This DDPM is conditioned on class labels: use --label D, not --prompt.")
            labels = np.full(n, label, np.int32) if label is not None else digits
            return sample(self.conditions_for(model, labels), scale, key)
        if label is not None:
            raise UserError("This DDPM is conditioned on text: use --prompt, not --label.")
        if prompt is None:
            return sample(self.conditions_for(model, digits, SEEN_PROMPT), scale, key)
        return sample(np.repeat(self.tokenizer.encode(prompt), n, axis=0), scale, key)

    def inference_fn(self, state):
        """The EMA noise predictor eps(x_t, t[, condition])."""
        x = np.zeros((1, *self.dataset.info["image_shape"]), np.float32)
        inputs = [("x_t", x), ("t", np.zeros((1,), np.int32))]
        if self.conditioning is None:
            return Inference("unet", state.ema, lambda m, x, t: m(x, t), inputs)
        cond = np.asarray(self.conditions_for(state.ema, np.zeros(1, np.int32), "{word}"))
        return Inference("unet", state.ema, lambda m, x, t, c: m(x, t, c), [*inputs, ("condition", cond)])

    def report(self, state, workdir):
        model, n = state.ema, self.num_samples
        sample = self.sampler_fn(model, n)
        labels = np.repeat(np.arange(10), n // 10)        # n / 10 per class, class-major
        metrics, files = {}, []
        rows = lambda imgs: imgs.reshape(10, n // 10, *imgs.shape[1:])[:, :10].reshape(-1, *imgs.shape[1:])

        if self.conditioning is None:
            images = sample(None, 0.0, jax.random.key(1))
            files.append(_grid(images[:100], workdir, "samples.png", f"unconditional DDPM ({self.sampler})"))
        else:
            template = SEEN_PROMPT if self.conditioning == "text" else None
            cond = self.conditions_for(model, labels, template)
            sweep = []
            for scale in self.guidance_scales:
                images = sample(cond, scale, jax.random.key(1))
                sweep.append((f"guidance {scale:g}", rows(images), 10))
            imlib.save_figure(sweep, os.path.join(workdir, "guidance_sweep.png"),
                              row_labels=[str(d) for d in range(10)])
            files.append("guidance_sweep.png")
            images = sample(cond, self.guidance, jax.random.key(2))
            what = f'prompts "{template}"' if template else "class labels"
            files.append(_grid(rows(images), workdir, "samples.png",
                               f"{what}, guidance {self.guidance:g} (row = requested digit)"))
            if self.conditioning == "text":
                unseen = sample(self.conditions_for(model, labels, UNSEEN_PROMPT), self.guidance, jax.random.key(3))
                files.append(_grid(rows(unseen), workdir, "samples_unseen_template.png",
                                   f'prompts "{UNSEEN_PROMPT}" (template not seen in training)'))
        files += self.trajectory_figures(model, workdir)
        notes = (f"schedule T={self.schedule.num_steps}, sampler {self.sampler}"
                 f"{'' if self.sampler == 'ddpm' else f' ({self.sample_steps} steps, eta {self.eta})'}; "
                 f"{n} samples per scored set; held-out eval/loss (Algorithm 1, EMA weights) and the "
                 "image judge's scores (eval/judge_heldout_accuracy, eval/*class_accuracy, ...) are in final.json.")
        write_report(workdir, f"DDPM ({self.conditioning or 'unconditional'})", self.config, files, metrics, notes)
        return metrics


    def trajectory_figures(self, model, workdir, frames: int = 11, rows: int = 4) -> list[str]:
        """forward.png: one held-out digit under q(x_t | x_0) at t = 0, T/10, ..., T (this
        schedule); reverse.png: the sampler's x_t and its predicted x_0 at `frames` evenly spaced
        steps of `rows` chains (digits 0..rows-1 when conditioned, guidance as in samples.png)."""
        real, _ = heldout_images(self.dataset, self.config.data.eval_split, 1)
        ts, strip = dm.forward_trajectory(self.schedule, jnp.asarray(real[0]) * 2.0 - 1.0,
                                          jax.random.key(5), frames)
        imlib.save_figure([(f"forward: x_t at t = {', '.join(map(str, ts))} (T = {self.schedule.num_steps})",
                            np.clip((np.asarray(strip) + 1.0) / 2.0, 0.0, 1.0), frames)],
                          os.path.join(workdir, "forward.png"), scale=0.3)
        template = SEEN_PROMPT if self.conditioning == "text" else None
        cond = self.conditions_for(model, np.arange(rows) % 10, template)
        _, traj = self.sampler_fn(model, rows, trajectory=True)(cond, self.guidance, jax.random.key(6))
        pick = np.round(np.linspace(0, len(traj["t"]) - 1, frames)).astype(int)
        when = ", ".join(str(int(traj["t"][k]) + 1) for k in pick)   # paper timesteps t = i + 1
        chains = lambda a: np.swapaxes(a[pick], 0, 1).reshape(-1, *a.shape[2:])   # row = chain
        imlib.save_figure([("x_t", chains(traj["x_t"]), frames), ("predicted x_0", chains(traj["x0"]), frames)],
                          os.path.join(workdir, "reverse.png"), scale=0.3,
                          row_labels=[f"chain {r}" for r in range(rows)])
        with open(os.path.join(workdir, "reverse_timesteps.txt"), "w") as f:
            f.write(f"{self.sampler} steps shown (t, left to right): {when}\n")
        return ["forward.png", "reverse.png"]


def _grid(images, workdir, name, title):
    imlib.save_grid(images, os.path.join(workdir, name), 10, title)
    return name
