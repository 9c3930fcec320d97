"""The frame every online loop (PPO, RLOO/GRPO, online DPO) runs in: open the run, load the policy, its
reference and the reward source, sample and score a rollout batch, and drive the steps (progress, logging,
evaluation, checkpoints, resume, NaN stop). Each method supplies only its own `update`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import dist
from ..errors import ConfigError, RewardSourceError
from .policy_eval import completion_logps, policy_eval
from ..models import add_lora, build_model, save_hf, set_dropout
from ..rollout import Rollout, encode_prompts, generate
from .data import begin_run, prompt_format, sized_sampling
from .engine import autocast, build_optimizer, build_scheduler, current_rss_mib, peak_memory_mib, set_seed
from .parallel import between_steps, load_checkpoint, rng_state, save_checkpoint, save_final, set_rng_state
from .guard import SaveSchedule, StopOnSignal, check_weights
from .moved import check_online
from .reference import reference_disabled
from .rl import KLController, check_finite, frozen_reference, reward_source


@dataclass
class Online:
    """Everything a step needs; built by `open_online`."""
    cfg: object
    run: object
    device: torch.device
    task: object
    prompts: list[str]
    policy: object
    tokenizer: object
    reference: object          # None with LoRA: the policy with adapters disabled is the reference
    reward: Callable           # (prompts, completions) -> (B,) scores, checked
    reward_model: object
    stop_id: int | None
    t_start: float = field(default_factory=time.time)

    def autocast(self):
        return autocast(self.device, self.cfg.train.precision)


def open_online(cfg) -> Online | dict:
    """Open the run dir (a finished run returns its summary), seed, load the policy (+ LoRA), the
    reference, the reward source and the training prompts (the prompts of the SFT-shaped records)."""
    start = begin_run(cfg, "sft")
    if isinstance(start, dict):
        return start
    policy, tokenizer = build_model(cfg.model, start.corpus(cfg.data.seed), seed=cfg.seed)
    # unique, in file order, in the model's prompt format (data/templates.py)
    formatted, _ = prompt_format(tokenizer, {"the training prompts": start.train}, cfg)
    prompts = list(dict.fromkeys(r.prompt for r in formatted["the training prompts"]))
    cfg = sized_sampling(cfg, tokenizer, formatted["the training prompts"], policy.config.max_position_embeddings)
    set_dropout(policy, 0.0)  # dropout off: rollout, old and new log-probs must agree [details]
    policy = add_lora(policy, cfg.lora).to(start.device)
    reward, rm = reward_source(cfg.reward, start.task, start.device, cfg.train.precision, cfg.data.max_length,
                               http=cfg.reward_http)
    stop_id = None
    if cfg.rollout.stop_token:
        ids = tokenizer(cfg.rollout.stop_token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(f"rollout.stop_token {cfg.rollout.stop_token!r} is {len(ids)} tokens for this "
                              "tokenizer; it must be exactly one")
        stop_id = ids[0]
    return Online(cfg, start.run, start.device, start.task, prompts, policy, tokenizer,
                  frozen_reference(policy), reward, rm, stop_id, start.t_start)


def truncate_at_stop(ro: Rollout, stop_id: int, pad_id: int):
    """Cut each response after its first `stop_id` (lm-human-preferences' truncate_token); such a row ends."""
    hit = (ro.response_ids == stop_id) & ro.response_mask.bool()
    first = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(hit[:, 0], -1, dtype=torch.long))
    cols = torch.arange(ro.response_ids.shape[1])
    cut = (first[:, None] >= 0) & (cols[None, :] > first[:, None])
    ro.response_mask = ro.response_mask.masked_fill(cut, 0)
    ro.response_ids = ro.response_ids.masked_fill(cut, pad_id)
    ro.logprobs = ro.logprobs.masked_fill(cut, 0.0)
    ro.finished = ro.finished | (first >= 0)


def sample_and_score(S: Online, prompts: list[str], step: int, n_per_prompt: int = 1):
    """Step 1-2 of every loop: sample `n_per_prompt` responses per prompt and score them.
    Returns (rollout, prompts repeated, response texts, scores (B,) with the missing-EOS penalty, raw scores).

    Under torchrun each rank samples and scores its contiguous share of `prompts` (with the noise those
    rows would get in one process: generate's row_offset), and the shares are gathered: every rank gets
    the whole batch, so whitening, group baselines and the KL controller see global statistics."""
    R = S.cfg.rollout
    share = dist.shard_range(len(prompts))
    ids, mask = encode_prompts(S.tokenizer, prompts[share], R.max_prompt_tokens)
    ro = generate(S.policy, ids.to(S.device), mask.to(S.device), max_new_tokens=R.max_new_tokens,
                  eos_token_id=S.tokenizer.eos_token_id, pad_token_id=S.tokenizer.pad_token_id,
                  temperature=R.temperature, top_k=R.top_k, top_p=R.top_p,
                  seed=S.cfg.seed * 1_000_003 + step, autocast=S.autocast, n_per_prompt=n_per_prompt,
                  row_offset=share.start * n_per_prompt)
    prompts = [p for p in prompts[share] for _ in range(n_per_prompt)]
    if S.stop_id is not None:
        truncate_at_stop(ro, S.stop_id, S.tokenizer.pad_token_id)
    texts = ro.texts(S.tokenizer)
    raw = S.reward(prompts, texts)
    # Penalty for responses that never end (lm-human-preference-details: a fixed low score; we subtract).
    scores = raw - R.missing_eos_penalty * (~ro.finished.cpu()).float()
    if dist.active():
        ro, prompts, texts, scores, raw = gather_rollouts(ro, prompts, texts, scores, raw, S.tokenizer.pad_token_id)
        ro = Rollout(**{k: v.to(S.device) for k, v in vars(ro).items()})
    return ro, prompts, texts, scores.to(S.device), raw


def gather_rollouts(ro: Rollout, prompts, texts, scores, raw, pad_id: int):
    """Every rank's share of a rollout, concatenated in rank order on every rank: prompts left-padded and
    responses right-padded to the widest share (exactly the batch one process would have sampled)."""
    shares = dist.all_gather_object(({k: v.cpu() for k, v in vars(ro).items()}, prompts, texts, scores, raw))
    P = max(s[0]["prompt_ids"].shape[1] for s in shares)
    R = max(s[0]["response_ids"].shape[1] for s in shares)

    def left(t, value):
        return torch.nn.functional.pad(t, (P - t.shape[1], 0), value=value)

    def right(t, value):
        return torch.nn.functional.pad(t, (0, R - t.shape[1]), value=value)

    parts = [s[0] for s in shares]
    ro = Rollout(prompt_ids=torch.cat([left(p["prompt_ids"], pad_id) for p in parts]),
                 prompt_mask=torch.cat([left(p["prompt_mask"], 0) for p in parts]),
                 response_ids=torch.cat([right(p["response_ids"], pad_id) for p in parts]),
                 response_mask=torch.cat([right(p["response_mask"], 0) for p in parts]),
                 logprobs=torch.cat([right(p["logprobs"], 0.0) for p in parts]),
                 finished=torch.cat([p["finished"] for p in parts]))
    return (ro, [x for s in shares for x in s[1]], [x for s in shares for x in s[2]],
            torch.cat([s[3] for s in shares]), torch.cat([s[4] for s in shares]))


def reference_scorer(S: Online):
    """(prompts, completions) -> reference log-probs, for the evaluation KL."""
    def score(prompts, completions):
        if S.reference is None:
            with reference_disabled(S.policy):
                return completion_logps(S.policy, S.tokenizer, prompts, completions, S.device,
                                        S.cfg.train.precision)
        return completion_logps(S.reference, S.tokenizer, prompts, completions, S.device, S.cfg.train.precision)
    return score


def online_fit(S: Online, params: list, updates_per_step: int, update: Callable[[int, KLController], dict],
               kl: KLController | None = None, modules: dict | None = None, desc: str = "rl") -> dict:
    """Run `update(step, kl) -> metrics` for train.max_steps steps with logging, evaluation, checkpoints and
    resume. `update` does the method's own rollout and optimizer steps through `S.optimizer` (and
    `step_optimizer`, which checks the weights after each). As in engine.fit: the loop's counters travel
    in the checkpoint, and SIGINT/SIGTERM stop at the end of the step after a checkpoint."""
    cfg, run = S.cfg, S.run
    steps = cfg.train.max_steps
    if steps < 1:
        raise ConfigError("train.max_steps must be >= 1 for online methods (one step = one rollout batch)")
    modules = {"policy": S.policy, **(modules or {})}
    if dist.active() and cfg.train.parallel == "fsdp":  # each rank samples on its own: no lock-step all-gathers
        raise ConfigError("train.parallel=fsdp is for sft, the dpo family and kto; online methods run with ddp")
    S.trainer = dist.Trainer(modules, cfg.train.parallel, S.device)
    if dist.active():
        set_seed(dist.rank_seed(cfg.seed))  # each rank its own stream for anything not seeded explicitly
    S.optimizer = build_optimizer(None, cfg.train, extra_params=params)
    S.scheduler = build_scheduler(S.optimizer, cfg.train, steps * updates_per_step)
    kl = kl or KLController(0.0, False, 1.0, 1)
    if dist.is_main():
        per_step = cfg.rollout.prompts_per_step
        print(f"{desc}: {len(S.prompts):,} distinct training prompts, {per_step} per step; {steps:,} steps "
              f"(train.max_steps) = {steps * per_step / max(len(S.prompts), 1):.3g} passes over them", flush=True)
    start, extra = 0, {}
    loaded = load_checkpoint(run, S.trainer, modules, S.optimizer, S.scheduler) if cfg.train.resume else None
    if loaded is not None:
        start, extra = loaded
        kl.value = extra.get("kl_coef", kl.value)
        kl.reached = extra.get("kl_reached", True)  # a checkpoint from before `reached` existed: adapting
    run.truncate_metrics(start)
    scorer = reference_scorer(S)

    def evaluate():
        if S.task is None:
            return {}
        return policy_eval(S.policy, S.tokenizer, S.task, cfg.eval, S.device, cfg.seed, cfg.data.seed,
                           cfg.train.precision, scorer)

    episodes, seconds = extra.get("episodes", 0), extra.get("seconds", 0.0)
    recent_kl: list[float] = extra.get("recent_kl", [])  # kl/seq of the last rollouts: did the policy move?
    last_eval, step = extra.get("last_eval", {}), start
    schedule = SaveSchedule(cfg.train, steps)

    def checkpoint(at: int):
        save_checkpoint(run, S.trainer, modules, S.optimizer, S.scheduler, at, extra={
            "kl_coef": kl.value, "kl_reached": kl.reached, "episodes": episodes, "seconds": seconds,
            "last_eval": last_eval, "recent_kl": recent_kl})
        schedule.saved()

    with StopOnSignal() as stop, tqdm(total=steps, initial=start, desc=desc, dynamic_ncols=True,
                                      disable=not cfg.train.progress or not dist.is_main()) as pbar:
        for step in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            rng = rng_state()
            try:
                metrics = update(step, kl)
            except RewardSourceError as e:  # e.g. a reward server gone: keep every finished step, say so in one line
                raise reward_failed(e, S, step, rng, checkpoint) from None
            dt = time.perf_counter() - t0
            episodes += metrics.pop("episodes")
            recent_kl = (recent_kl + [metrics["kl/seq"]])[-max(3, steps // 10):]
            seconds += dt
            row = {"step": step, "lr": S.scheduler.get_last_lr()[0], "kl/coef": kl.value, **metrics,
                   "time/step": dt, "episodes_per_s": episodes / seconds, "mem/rss_mib": current_rss_mib()}
            pbar.update(1)
            pbar.set_postfix(score=f"{metrics.get('objective/scores', 0):.3f}", kl=f"{metrics.get('kl/seq', 0):.2f}")
            if dist.is_main() and ((cfg.train.eval_every and step % cfg.train.eval_every == 0) or step == steps):
                last_eval = evaluate()
                row.update(last_eval)
            if step % cfg.train.log_every == 0 or step == steps or "gold/mean" in row:
                run.log(row)
            save_now, stopping = between_steps(stop, schedule, step)
            if save_now:
                checkpoint(step)
            if stopping and step < steps:
                raise stop.interrupted(run, step, steps)
            if cfg.train.stop_after and step == cfg.train.stop_after and step < steps:
                break
    finished = step == steps
    if finished:  # written to a staging dir; write_summary publishes it as final/
        save_final(run, S.policy, S.tokenizer, merge_lora=cfg.lora.merge or not cfg.lora.enabled,
                   save_hf=save_hf)
    summary = {"steps": step, "total_steps": steps, "finished": finished, "episodes": episodes,
               "train_seconds": seconds, "episodes_per_s": episodes / max(seconds, 1e-9), "kl/coef": kl.value,
               **peak_memory_mib(S.device), **last_eval, "wall_seconds": time.time() - S.t_start,
               "device": str(S.device), **({"world_size": dist.world()} if dist.active() else {})}
    if finished:
        summary.update(check_online(cfg, summary, desc, recent_kl))
    run.write_summary(summary)
    return summary


def reward_failed(e: RewardSourceError, S: Online, step: int, rng: dict, checkpoint) -> RewardSourceError:
    """The reward source failed during `step`, before the step changed any weight (every loop scores its rollout
    first): checkpoint step − 1 unless that is on disk already (with the RNG state as it was when the step
    began), and return the error as one line that says what a re-run continues from. Under torchrun nothing
    is saved here: a checkpoint is a collective, and the other ranks are waiting for this one in another."""
    run, done = S.run, step - 1
    if done > 0 and not dist.active() and run.checkpoint_step != done:
        set_rng_state(rng)
        checkpoint(done)
    total = S.cfg.train.max_steps
    if run.checkpoint_step is not None:
        kept = (f"the checkpoint of step {run.checkpoint_step} is kept ({run.ckpt}): run the same command again "
                "to continue from it")
    else:
        kept = "no checkpoint yet: the same command starts over"
    return RewardSourceError(f"{e}; {run.stage} stopped in step {step} of {total}, {kept}")


def step_optimizer(S: Online, params: list, step: int) -> float:
    """Clip, check, step the optimizer and scheduler, check the weights; returns the gradient norm."""
    max_norm = S.cfg.train.max_grad_norm if S.cfg.train.max_grad_norm > 0 else 1e12
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    check_finite("the gradient norm", grad_norm, step, S.run)
    S.optimizer.step()
    check_weights(params, S.run, step)
    S.scheduler.step()
    S.optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def rank_share(local_mean: torch.Tensor, local_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """This rank's share of a token mean over a micro-batch whose rows are split over the ranks: the mean
    over its own rows (`local_mask`) rescaled so that the average over ranks (DDP's gradient average,
    dist.mean_metrics) is the mean over all the micro-batch's tokens (`mask`). One process: unchanged."""
    if not dist.active():
        return local_mean
    return local_mean * local_mask.sum() / mask.sum().clamp(min=1) * dist.world()


def micro_batches(rows: torch.Tensor, size: int):
    """Split a minibatch's row indices into micro-batches of at most `size`; yields (rows, weight)."""
    size = max(1, size)
    for i in range(0, len(rows), size):
        part = rows[i:i + size]
        yield part, len(part) / len(rows)


def select(seqs: dict, rows: torch.Tensor) -> dict:
    return {k: v[rows] for k, v in seqs.items()}
