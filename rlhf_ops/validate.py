"""Checks of a composed config that the schema's types cannot express, run before any work.

Every error is a ValueError naming the key, so the CLI prints it on one line.
"""

from __future__ import annotations

from pathlib import Path

import math


def _check(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value} {rule}")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


STAGES = ("sft", "reward", "ppo", "dpo", "rloo", "grpo", "rejection_sampling")


def _group_rl(cfg, name: str) -> None:
    st = cfg.stage[name]
    _check(st.num_generations >= 2, f"stage.{name}.num_generations", st.num_generations,
           "must be >= 2 (each completion's baseline is the other completions of its prompt)")
    batch = st.per_device_train_batch_size * st.gradient_accumulation_steps
    if batch % st.num_generations:
        raise ValueError(f"stage.{name}.num_generations={st.num_generations} must divide the batch of completions "
                         f"(per_device_train_batch_size x gradient_accumulation_steps = {batch}): a prompt's "
                         "completions are one group")
    _check(st.max_completion_length >= 1, f"stage.{name}.max_completion_length", st.max_completion_length, "must be >= 1")
    _check(_finite(st.temperature) and st.temperature > 0, f"stage.{name}.temperature", st.temperature, "must be > 0")
    from omegaconf import OmegaConf

    if not OmegaConf.is_interpolation(st, "beta"):  # ${loop.kl.beta} is checked as loop.kl.beta
        _check(_finite(st.beta) and st.beta >= 0, f"stage.{name}.beta", st.beta, "must be >= 0")
    _check(st.num_iterations >= 1, f"stage.{name}.num_iterations", st.num_iterations, "must be >= 1")
    _check(_finite(st.epsilon) and st.epsilon > 0, f"stage.{name}.epsilon", st.epsilon, "must be > 0")
    if st.missing_eos_penalty is not None:
        _check(_finite(st.missing_eos_penalty) and st.missing_eos_penalty >= 0, f"stage.{name}.missing_eos_penalty",
               st.missing_eos_penalty, "must be >= 0 or null")


def _ranges(cfg) -> None:
    """Values every job needs in range; a NaN or a negative learning rate never reaches a trainer."""
    _check(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    for name in STAGES:
        st = cfg.stage[name]
        _check(_finite(st.learning_rate) and st.learning_rate > 0, f"stage.{name}.learning_rate", st.learning_rate,
               "must be a finite number > 0")
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            _check(st[key] >= 1, f"stage.{name}.{key}", st[key], "must be >= 1")
        if "num_train_epochs" in st:
            _check(_finite(st.num_train_epochs) and (st.num_train_epochs > 0 or st.max_steps > 0),
                   f"stage.{name}.num_train_epochs", st.num_train_epochs, "must be > 0 (or set max_steps > 0)")
        if "max_length" in st:
            _check(st.max_length >= 2, f"stage.{name}.max_length", st.max_length, "must be >= 2")
    for name in ("rloo", "grpo"):
        _group_rl(cfg, name)
    ppo = cfg.stage.ppo
    _check(ppo.response_length >= 1, "stage.ppo.response_length", ppo.response_length, "must be >= 1")
    _check(_finite(ppo.temperature) and ppo.temperature > 0, "stage.ppo.temperature", ppo.temperature,
           "must be > 0 (sampling; PPO's KL and entropy need a tempered distribution)")
    _check(_finite(cfg.stage.dpo.beta) and cfg.stage.dpo.beta > 0, "stage.dpo.beta", cfg.stage.dpo.beta, "must be > 0")
    _check(0 <= cfg.stage.reward.eval_fraction < 1, "stage.reward.eval_fraction", cfg.stage.reward.eval_fraction,
           "must be in [0, 1)")
    # Found by scripts/bad_inputs.py: each of these failed only inside a trainer, or never (NaN weights, no update).
    _check(cfg.seed < 2**31, "seed", cfg.seed, "must be < 2**31 (numpy's seeds, derived from it per member and "
           "process, must stay below 2**32)")
    for name in STAGES:
        st = cfg.stage[name]
        _check(st.logging_steps >= 1, f"stage.{name}.logging_steps", st.logging_steps, "must be >= 1")
        if "warmup_steps" in st:
            _check(st.warmup_steps >= 0, f"stage.{name}.warmup_steps", st.warmup_steps, "must be >= 0")
        if "weight_decay" in st:
            _check(_finite(st.weight_decay) and st.weight_decay >= 0, f"stage.{name}.weight_decay", st.weight_decay,
                   "must be a finite number >= 0")
    _check(ppo.num_ppo_epochs >= 1, "stage.ppo.num_ppo_epochs", ppo.num_ppo_epochs, "must be >= 1 (0 never updates)")
    _check(_finite(ppo.cliprange) and ppo.cliprange > 0, "stage.ppo.cliprange", ppo.cliprange,
           "must be a finite number > 0")
    _check(_finite(ppo.vf_coef) and ppo.vf_coef >= 0, "stage.ppo.vf_coef", ppo.vf_coef, "must be a finite number >= 0")
    _check(ppo.local_rollout_forward_batch_size >= 1, "stage.ppo.local_rollout_forward_batch_size",
           ppo.local_rollout_forward_batch_size, "must be >= 1")
    if ppo.missing_eos_penalty is not None:
        _check(_finite(ppo.missing_eos_penalty) and ppo.missing_eos_penalty >= 0, "stage.ppo.missing_eos_penalty",
               ppo.missing_eos_penalty, "must be a finite number >= 0 or null (it is subtracted from the score)")
    crc = cfg.stage.reward.center_rewards_coefficient
    if crc is not None:
        _check(_finite(crc) and crc >= 0, "stage.reward.center_rewards_coefficient", crc,
               "must be a finite number >= 0 or null")
    _check(str(cfg.stage.dpo.loss_type) in DPO_LOSS_TYPES, "stage.dpo.loss_type", cfg.stage.dpo.loss_type,
           f"must be one of TRL's DPO losses: {', '.join(DPO_LOSS_TYPES)}")
    _check(cfg.launcher.num_processes >= 1, "launcher.num_processes", cfg.launcher.num_processes, "must be >= 1")
    _check(cfg.launcher.timeout_s >= 0, "launcher.timeout_s", cfg.launcher.timeout_s, "must be >= 0 (0 = no limit)")
    if not cfg.model.path and cfg.job == "loop":  # a one-stage job reads its model from io.*
        _tiny_model_shape(cfg)


# TRL's DPOTrainer.dpo_loss (the same in 1.12 and 1.16): any other name fails only in the first DPO step.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


def _tiny_model_shape(cfg) -> None:
    """The tiny Llama's shape (model=tiny): a bad one failed in prepare's model build or in its first forward."""
    m = cfg.model
    for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "max_position_embeddings"):
        _check(m[key] >= 1, f"model.{key}", m[key], "must be >= 1")
    _check(m.vocab_size > 256, "model.vocab_size", m.vocab_size, "must be > 256 (the byte-level tokenizer's alphabet)")
    heads, kv = m.num_heads, min(m.num_kv_heads, m.num_heads)  # as rlhf_ops.models._llama_config
    _check(heads % kv == 0, "model.num_kv_heads", m.num_kv_heads, f"must divide model.num_heads ({heads})")
    for key in ("reward_hidden_size", "reward_num_layers"):
        _check(m[key] >= 0, f"model.{key}", m[key], "must be >= 0 (0 = the policy's)")
    for key in ("hidden_size", "reward_hidden_size"):
        if m[key]:
            _check(m[key] % (2 * heads) == 0, f"model.{key}", m[key],
                   f"must be a multiple of 2 x model.num_heads ({2 * heads}): an even head size, as RoPE needs")
    rl = cfg.stage.ppo.response_length
    _check(rl < m.max_position_embeddings, "stage.ppo.response_length", rl,
           f"must be < model.max_position_embeddings ({m.max_position_embeddings}), leaving room for a prompt")


def _loop_ranges(cfg) -> None:
    lp, kl = cfg.loop, cfg.loop.kl
    for key in ("prompts_per_iteration", "eval_samples_per_prompt"):
        _check(lp[key] >= 1, f"loop.{key}", lp[key], "must be >= 1")
    _check(lp.completions_per_prompt >= 1, "loop.completions_per_prompt", lp.completions_per_prompt, "must be >= 1")
    _check(lp.min_pairs >= 0, "loop.min_pairs", lp.min_pairs, "must be >= 0")
    if "label" in lp.steps and lp.min_pairs > lp.prompts_per_iteration:
        raise ValueError(f"loop.min_pairs={lp.min_pairs}: a labeler gives at most one pair per prompt, and "
                         f"loop.prompts_per_iteration={lp.prompts_per_iteration}: every iteration would be abandoned")
    if "label" in lp.steps and lp.completions_per_prompt < 2:
        raise ValueError(f"loop.completions_per_prompt={lp.completions_per_prompt}: a labeler compares completions "
                         "of one prompt, so it needs >= 2 (with 1 every iteration gives zero pairs)")
    _check(_finite(kl.beta) and kl.beta >= 0, "loop.kl.beta", kl.beta, "must be a finite number >= 0")
    _check(_finite(kl.max_beta) and kl.max_beta >= kl.beta, "loop.kl.max_beta", kl.max_beta,
           f"must be >= loop.kl.beta ({kl.beta})")
    if kl.controller == "adaptive":
        _check(_finite(kl.target) and kl.target > 0, "loop.kl.target", kl.target, "must be > 0 (the adaptive controller's KL target)")
        _check(kl.horizon >= 1, "loop.kl.horizon", kl.horizon, "must be >= 1")
        _check(0 <= kl.min_beta <= kl.beta, "loop.kl.min_beta", kl.min_beta, f"must be in [0, loop.kl.beta={kl.beta}]")
    for key in ("start_mult", "end_mult"):
        _check(_finite(kl[key]) and kl[key] >= 0, f"loop.kl.{key}", kl[key], "must be >= 0")
    t = lp.eval_temperature
    if t is not None:
        _check(_finite(t) and t > 0, "loop.eval_temperature", t,
               "must be > 0 (at 0 the KL and entropy the detectors read are meaningless); null = PPO's")
    if lp.min_win_rate is not None:
        _check(0 <= lp.min_win_rate <= 1, "loop.min_win_rate", lp.min_win_rate, "must be in [0, 1] or null")
    for key in ("beta_remedy_factor",):
        _check(_finite(lp[key]) and lp[key] >= 1, f"loop.{key}", lp[key], "must be >= 1 (it raises beta)")
    _check(_finite(lp.lr_remedy_factor) and 0 < lp.lr_remedy_factor <= 1, "loop.lr_remedy_factor",
           lp.lr_remedy_factor, "must be in (0, 1] (it lowers the learning rate)")
    if lp.rm_update_disagreement is not None:
        _check(_finite(lp.rm_update_disagreement) and 0 <= lp.rm_update_disagreement < 1, "loop.rm_update_disagreement",
               lp.rm_update_disagreement, "must be in [0, 1) or null")
        if lp.labeler == "reward_model":
            raise ValueError("loop.rm_update_disagreement: with loop.labeler=reward_model the fresh labels are the RM's "
                             "own rankings, so it never disagrees with them; use it with the judge, a person or an annotator")
    if lp.rm_update_plateau is not None:
        _check(lp.rm_update_plateau >= 1, "loop.rm_update_plateau", lp.rm_update_plateau,
               "must be an iteration count >= 1 or null")
        _check(_finite(lp.rm_update_plateau_margin) and 0 <= lp.rm_update_plateau_margin < 0.5,
               "loop.rm_update_plateau_margin", lp.rm_update_plateau_margin, "must be in [0, 0.5)")
        if lp.min_win_rate is None:
            raise ValueError("loop.rm_update_plateau: a plateau is read from the gate's head-to-head win rate, and "
                             "loop.min_win_rate=null turns the head-to-head off")
        if lp.labeler == "reward_model":
            raise ValueError("loop.rm_update_plateau: with loop.labeler=reward_model a refresh trains the RM on its "
                             "own rankings, which cannot lift a plateau; use the judge, a person or an annotator")
    if lp.dpo_reference == "policy" and cfg.model.lora.r > 0 and cfg.model.lora.policy:
        raise ValueError("loop.dpo_reference=policy: with LoRA (model.lora.r > 0) the reference is the adapter's base "
                         "with the adapter disabled, always the SFT policy; use loop.dpo_reference=sft or model.lora.r=0")
    _check(lp.rm_adversarial_repeat >= 0, "loop.rm_adversarial_repeat", lp.rm_adversarial_repeat, "must be >= 0 (0 = off)")
    if lp.rm_adversarial_repeat > 0 and lp.labeler in ("reward_model", "human"):
        raise ValueError(f"loop.rm_adversarial_repeat={lp.rm_adversarial_repeat}: a rejected candidate's samples are "
                         f"labelled by loop.labeler, and {lp.labeler} cannot: "
                         + ("the RM that was fooled would label what fooled it" if lp.labeler == "reward_model" else
                            "the gate does not pause for a person") + "; use the judge or an annotator")
    _check(lp.rm_hard_pair_repeat >= 1, "loop.rm_hard_pair_repeat", lp.rm_hard_pair_repeat, "must be >= 1 (1 = no repeat)")
    _check(0 < lp.rm_heldout_fraction < 1, "loop.rm_heldout_fraction", lp.rm_heldout_fraction, "must be in (0, 1)")
    if lp.max_rollbacks is not None:
        _check(lp.max_rollbacks >= 1, "loop.max_rollbacks", lp.max_rollbacks, "must be >= 1 or null")
    # Found by scripts/bad_inputs.py: failed at the first policy update or rollback, or were silently ignored.
    _check(_finite(kl.remedy_min_beta) and 0 <= kl.remedy_min_beta <= kl.max_beta, "loop.kl.remedy_min_beta",
           kl.remedy_min_beta, f"must be in [0, loop.kl.max_beta={kl.max_beta}]")
    _check(_finite(lp.lr_end_mult) and lp.lr_end_mult >= 0, "loop.lr_end_mult", lp.lr_end_mult,
           "must be a finite number >= 0")
    _check(_finite(lp.ensemble_lambda) and lp.ensemble_lambda >= 0, "loop.ensemble_lambda", lp.ensemble_lambda,
           "must be a finite number >= 0 (it subtracts the ensemble's variance)")
    if lp.keep_last is not None:
        _check(lp.keep_last >= 0, "loop.keep_last", lp.keep_last, "must be >= 0 or null (null keeps every checkpoint)")
    vote = str(lp.gate_vote)
    n_detectors = len({d["name"] for d in lp.detectors} | {"non_finite"})  # non_finite is always on
    if vote.isdigit():
        _check(1 <= int(vote) <= n_detectors, "loop.gate_vote", vote,
               f"must be between 1 and the number of detectors ({n_detectors}, non_finite included): "
               "a larger vote can never reject")
    else:
        _check(vote in ("any", "majority"), "loop.gate_vote", vote, "must be any, majority or a count")


_PRECHECKED: set[str] = set()  # fingerprints of compositions the CLI's pre-check validated, not yet run


def _fingerprint(cfg) -> str:
    """The config as composed, Hydra's own node aside and nothing resolved: the pre-check's composition
    and the one @hydra.main hands the run (cli._ComposedOnce) have the same fingerprint."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))


def mark_prechecked(cfg) -> None:
    """The CLI's pre-check validated `cfg` just now, and @hydra.main is about to run this composition."""
    _PRECHECKED.add(_fingerprint(cfg))


def validate_config_once(cfg) -> None:
    """validate_config, unless the CLI's pre-check validated this composition a moment ago in this process
    (then only what Hydra's run resolves anew, the run dir's ledger, is checked again: about 0.4 s of
    checks, imports and probes not repeated per command). Once: a second run of the same composition in
    this process is validated in full."""
    key = _fingerprint(cfg)
    if key in _PRECHECKED:
        _PRECHECKED.discard(key)
        _run_dir_ledger(cfg)
        return
    validate_config(cfg)


def validate_config(cfg) -> None:
    _ranges(cfg)
    from omegaconf import OmegaConf

    if OmegaConf.select(cfg, "hydra.runtime.choices.model", default=None) == "local" and not cfg.model.path:
        # conf/model/local.yaml's `path: ???` does not replace the schema's "" (a merge keeps a value over ???):
        # without this check, model=local with no path built the tiny model instead
        raise ValueError("model.path: model=local needs model.path=DIR (a local checkpoint directory)")

    from .stages import trl_args, trl_compat

    _installed_trl_trains_it(cfg)
    for name in STAGES:  # every stage key is TRL's or ours, by name
        if name == "ppo" and not trl_compat.has_ppo():
            continue  # no PPOConfig to check stage.ppo against, and nothing here trains PPO (checked just above)
        trl_args.check(name, OmegaConf.to_container(cfg.stage[name], resolve=True))
    ppo = cfg.stage.ppo
    batch = ppo.per_device_train_batch_size * ppo.gradient_accumulation_steps
    if batch % ppo.num_mini_batches:
        raise ValueError(f"stage.ppo.num_mini_batches={ppo.num_mini_batches} must divide the batch "
                         f"(per_device_train_batch_size x gradient_accumulation_steps = {batch})")
    if ppo.total_episodes < batch:
        raise ValueError(f"stage.ppo.total_episodes={ppo.total_episodes} is smaller than one batch ({batch})")
    if ppo.whiten_rewards and batch // ppo.num_mini_batches < 8:  # TRL's PPOTrainer asserts it, after loading
        raise ValueError(f"stage.ppo.whiten_rewards=true needs mini-batches of >= 8 (per_device_train_batch_size x "
                         f"gradient_accumulation_steps / num_mini_batches = {batch // ppo.num_mini_batches})")
    if cfg.stage.reward.ensemble_size < 1:
        raise ValueError("stage.reward.ensemble_size must be >= 1")
    if cfg.loop.kl.beta < 0:
        raise ValueError(f"loop.kl.beta={cfg.loop.kl.beta} must be >= 0")
    for key in ("rm_accuracy_tolerance", "rm_accuracy_z"):
        if not cfg.loop[key] >= 0:
            raise ValueError(f"loop.{key}={cfg.loop[key]} must be >= 0")
    if not 0 <= cfg.loop.rm_replay_ratio < 1:
        raise ValueError(f"loop.rm_replay_ratio={cfg.loop.rm_replay_ratio} must be in [0, 1)")
    if cfg.model.path and not Path(cfg.model.path).is_dir():
        p = Path(cfg.model.path)
        if p.is_file():
            hint = (" (a GGUF file must be converted to a save_pretrained directory first)" if p.suffix == ".gguf"
                    else " (point at the directory that holds config.json and the .safetensors weights)")
            raise ValueError(f"model.path: {p} is a file, not a checkpoint directory{hint}")
        raise ValueError(f"model.path: no checkpoint directory at {cfg.model.path}")
    if cfg.model.path:
        from .checkpoints import check_checkpoint_dir

        _model_json_object(Path(cfg.model.path))
        check_checkpoint_dir(cfg.model.path, "model.path", tokenizer=True)
        _model_dir_extras(cfg, Path(cfg.model.path))
    if cfg.launcher.deepspeed:
        from .launcher import resolve_deepspeed

        resolve_deepspeed(cfg.launcher.deepspeed)
    _lora(cfg)
    _generation(cfg)
    if cfg.job in STAGES:
        if not cfg.io.output:
            raise ValueError(f"io.output: job={cfg.job} needs an output directory (io.output=PATH)")
        return
    _validate_loop(cfg)


def _lora(cfg) -> None:
    """model.lora: ranges, and every target module present in the model it will adapt (a name the model
    lacks failed in the first stage, after the data was prepared; peft's message named no key)."""
    lora = cfg.model.lora
    _check(lora.r >= 0, "model.lora.r", lora.r, "must be >= 0 (0 = off: full fine-tuning)")
    if lora.r == 0:
        return
    _check(_finite(lora.alpha) and lora.alpha > 0, "model.lora.alpha", lora.alpha, "must be a finite number > 0")
    _check(_finite(lora.dropout) and 0 <= lora.dropout < 1, "model.lora.dropout", lora.dropout, "must be in [0, 1)")
    _check(len(lora.target_modules) > 0, "model.lora.target_modules", list(lora.target_modules),
           "must name at least one module (or [all-linear])")
    if not (lora.policy or lora.reward_model):
        raise ValueError(f"model.lora.r={lora.r} with model.lora.policy=false and model.lora.reward_model=false: "
                         "no model gets an adapter; set model.lora.r=0 for full fine-tuning")
    if cfg.job == "loop":
        where = cfg.model.path or None
    else:
        where = cfg.io.reward_model if cfg.job == "reward" else cfg.io.policy
    from .lora import check_target_modules

    check_target_modules(list(lora.target_modules), where, cfg.model)


def _generation(cfg) -> None:
    """generation.backend=vllm needs CUDA and vLLM; said here, not when collect first samples."""
    g = cfg.generation
    _check(_finite(g.gpu_memory_utilization) and 0 < g.gpu_memory_utilization <= 1,
           "generation.gpu_memory_utilization", g.gpu_memory_utilization, "must be in (0, 1]")
    _check(g.tensor_parallel_size >= 1, "generation.tensor_parallel_size", g.tensor_parallel_size, "must be >= 1")
    if g.backend != "vllm":
        return
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ValueError("generation.backend=vllm needs a CUDA GPU, and torch sees none on this machine; use "
                         "generation.backend=hf")
    if importlib.util.find_spec("vllm") is None:
        raise ValueError("generation.backend=vllm: vllm is not installed; pip install 'rlhf_ops[vllm]' (the vLLM "
                         "versions TRL supports), or use generation.backend=hf")


def _uses_ppo(cfg) -> tuple[str, str] | None:
    """What in `cfg` trains PPO, and what to use instead; None when nothing does."""
    if cfg.job == "ppo":
        return "job=ppo", "use job=rloo|grpo"
    if cfg.job != "loop":
        return None
    lp = cfg.loop
    for key in ("setup", "steps"):
        if "ppo_once" in lp[key]:
            return f"ppo_once in loop.{key}", f"leave ppo_once out of loop.{key}"
    if lp.policy_update == "ppo" and "policy_update" in lp.steps:
        return "loop.policy_update=ppo", "use loop.policy_update=rloo|grpo"
    return None


def _installed_trl_trains_it(cfg) -> None:
    """PPO needs TRL <= 1.12 (rlhf_ops.stages.trl_compat): on a newer TRL a config that trains it stops here, in
    one line, instead of at its first PPO step after setup has trained the SFT policy and the reward model."""
    from .stages import trl_compat

    uses = _uses_ppo(cfg)
    if uses is not None and not trl_compat.has_ppo():
        raise ValueError(trl_compat.ppo_missing(*uses))


def _model_json_object(path: Path) -> None:
    """config.json must be a JSON object (a list or a string failed as an AttributeError naming no file)."""
    import json

    f = path / "config.json"
    try:
        conf = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # absent or not JSON: check_checkpoint_dir says so, naming the file
    if not isinstance(conf, dict):
        raise ValueError(f"model.path: {f} holds a JSON {type(conf).__name__}, not an object (a model config)")


def _model_dir_extras(cfg, path: Path) -> None:
    """What check_checkpoint_dir does not read: the tokenizer's JSON (transformers raised a bare JSONDecodeError in
    prepare), shards a weights index names, the context length the PPO responses need, and keys a real model ignores."""
    import json

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        f = path / name
        if f.is_file():
            try:
                json.loads(f.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ValueError(f"model.path: {f} is not valid JSON ({e}): a damaged or partial copy") from None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"model.path: {index} is not a weights index (no weight_map: {e})") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ValueError(f"model.path: {index} names {len(missing)} missing shard(s) ({', '.join(missing[:3])}): "
                             "an interrupted download or copy")
    conf = json.loads((path / "config.json").read_text(encoding="utf-8")) if (path / "config.json").is_file() else {}
    text = conf.get("text_config") or conf
    mpe = text.get("max_position_embeddings") or text.get("n_positions")
    rl = cfg.stage.ppo.response_length
    if cfg.job == "loop" and isinstance(mpe, int) and rl >= mpe:
        raise ValueError(f"stage.ppo.response_length={rl} must be < the model's max_position_embeddings ({mpe}, "
                         f"{path / 'config.json'}), leaving room for a prompt")
    if cfg.model.reward_init == "scratch":
        raise ValueError("model.reward_init=scratch builds a tiny reward model, for model=tiny only; with model.path "
                         "the reward model starts from the model's backbone (model.reward_init=policy)")


def _validate_task(cfg) -> None:
    """The task is built (cheap: no data read) and checked, and the loop's labeler must fit it."""
    from .tasks import make_task

    set_io = [f"io.{k}" for k, v in cfg.io.items() if v]
    if set_io:
        raise ValueError(f"{', '.join(set_io)}: io.* paths are for one stage (job=sft|reward|ppo|dpo) and a loop "
                         "ignores them; give a loop your data with task=files task.prompts=FILE [task.sft=FILE] "
                         "[task.pairs=FILE] and your model with model=local model.path=DIR")
    try:
        task = make_task(cfg.task)
    except Exception as e:  # noqa: BLE001 - instantiate wraps the task's own error
        raise ValueError(f"task: cannot build task '{cfg.task.get('_target_')}': {e.__cause__ or e}") from e
    task.check()
    lp = cfg.loop
    uses_labeler = "label" in lp.steps
    if uses_labeler and lp.labeler == "annotator" and lp.annotator not in task.annotators():
        offered = list(task.annotators())
        raise ValueError(f"loop.labeler=annotator: task '{task.name}' has no simulated annotator '{lp.annotator}' "
                         f"(it offers {offered or 'none'}); use loop.labeler=reward_model or loop.labeler=human")
    if cfg.task.get("pairs", "given") is None:  # no seed pairs: no RM warm-up
        if uses_labeler and lp.labeler == "reward_model":
            raise ValueError("loop.labeler=reward_model needs a reward model before the first labels, and without "
                             "task.pairs there is no warm-up to train one; give task.pairs=FILE or use "
                             "loop.labeler=human")
        if not uses_labeler and lp.policy_update in ("ppo", "rloo", "grpo", "rejection_sampling"):
            raise ValueError(f"this loop trains {str(lp.policy_update).upper()} against a reward model, but without task.pairs and without a "
                             "label step nothing trains one; give task.pairs=FILE")


def _validate_loop(cfg) -> None:
    from .control.detectors import build_detectors
    from .control.rm_update_policy import RMUpdatePolicy
    from .loop.recipe import check_recipe

    _validate_task(cfg)
    _loop_ranges(cfg)
    lp = cfg.loop
    ppo = cfg.stage.ppo
    batch = ppo.per_device_train_batch_size * ppo.gradient_accumulation_steps * max(1, cfg.launcher.num_processes)
    if lp.policy_update == "ppo" and 0 < lp.prompts_per_iteration < batch:
        import logging

        logging.getLogger(__name__).warning(
            "loop.prompts_per_iteration=%d is fewer than one PPO batch (%d = stage.ppo.per_device_train_batch_size x "
            "gradient_accumulation_steps x launcher.num_processes): each PPO update cycles the prompts to fill it",
            lp.prompts_per_iteration, batch)
    if lp.iterations < 0:
        raise ValueError(f"loop.iterations={lp.iterations} must be >= 0")
    build_detectors([dict(d) for d in lp.detectors])
    check_recipe(list(lp.setup), list(lp.steps), lp.iterations)
    if "rm_update" in lp.steps:
        never = lp.rm_update_every is None and lp.rm_update_kl_threshold is None
        policy = RMUpdatePolicy(every=lp.rm_update_every, kl_threshold=lp.rm_update_kl_threshold,
                                freeze=[tuple(w) for w in lp.rm_freeze], never=never)
        if not never and not policy.can_fire(lp.iterations):
            raise ValueError(
                f"loop.rm_update_every={lp.rm_update_every} / loop.rm_freeze={list(map(list, lp.rm_freeze))}: "
                f"the reward model can never be updated within loop.iterations={lp.iterations}"
            )
    _run_dir_ledger(cfg)
    _validate_judge(cfg)
    if (lp.policy_update in ("ppo", "rloo", "grpo", "rejection_sampling") and lp.ensemble_reduce != "mean"
            and cfg.stage.reward.ensemble_size == 1):
        import logging

        logging.getLogger(__name__).warning(
            "loop.ensemble_reduce=%s combines an ensemble's members, and stage.reward.ensemble_size=1: with one "
            "reward model it is the plain mean", lp.ensemble_reduce)
    for key, step in (("sft_demos_per_prompt", "sft"), ("n_offline_pairs", "rm_warmup")):  # the testbed's sizes
        if key in cfg.task and step in lp.setup:
            _check(cfg.task[key] >= 1, f"task.{key}", cfg.task[key], f"must be >= 1 (loop.setup runs {step})")


def _validate_judge(cfg) -> None:
    """loop.judge and loop.gate: the judge must exist before anything trains (a local directory with a chat
    template, or a server that answers the probe), and the test's numbers must make sense."""
    from .loop.judging import gate_oracle, judge_configured

    lp, g, j = cfg.loop, cfg.loop.gate, cfg.loop.judge
    _check(_finite(g.alpha) and 0 < g.alpha < 1, "loop.gate.alpha", g.alpha, "must be in (0, 1)")
    _check(g.min_comparisons >= 1, "loop.gate.min_comparisons", g.min_comparisons, "must be >= 1")
    _check(g.max_comparisons >= g.min_comparisons, "loop.gate.max_comparisons", g.max_comparisons,
           f"must be >= loop.gate.min_comparisons ({g.min_comparisons})")
    _check(g.batch >= 1, "loop.gate.batch", g.batch, "must be >= 1")
    _check(_finite(g.max_tie_rate) and 0 <= g.max_tie_rate <= 1, "loop.gate.max_tie_rate", g.max_tie_rate,
           "must be in [0, 1]")
    _check(_finite(j.tie_margin) and 0 <= j.tie_margin < 0.5, "loop.judge.tie_margin", j.tie_margin, "must be in [0, 0.5)")
    _check(j.batch_size >= 1, "loop.judge.batch_size", j.batch_size, "must be >= 1")
    _check(_finite(j.timeout_s) and j.timeout_s > 0, "loop.judge.timeout_s", j.timeout_s, "must be > 0 (seconds)")
    _check(j.retries >= 0, "loop.judge.retries", j.retries, "must be >= 0")
    _check(j.concurrency >= 1, "loop.judge.concurrency", j.concurrency, "must be >= 1")
    if j.model and j.url:
        raise ValueError(f"loop.judge.model={j.model} and loop.judge.url={j.url}: give one judge, a local model "
                         "directory or a server, not both")
    oracle = gate_oracle(cfg)
    uses = ("label" in lp.steps and lp.labeler == "judge") or (oracle == "judge" and lp.min_win_rate is not None)
    if (lp.labeler == "judge" and "label" in lp.steps or oracle == "judge") and not judge_configured(cfg):
        who = "loop.labeler=judge" if lp.labeler == "judge" else "loop.gate.oracle=judge"
        raise ValueError(f"{who} needs a judge: loop.judge.model=DIR (a local chat model) or loop.judge.url=URL "
                         "(an OpenAI-compatible server)")
    if oracle == "gold" and str(g.oracle) == "gold":
        from .tasks import make_task

        if make_task(cfg.task).gold is None:
            raise ValueError(f"loop.gate.oracle=gold: task '{cfg.task.name}' has no gold reward; use "
                             "loop.gate.oracle=judge with loop.judge.model or loop.judge.url, or loop.gate.oracle=none")
    _check(_finite(g.rm_share) and 0 < g.rm_share < 1, "loop.gate.rm_share", g.rm_share, "must be in (0, 1)")
    if oracle == "heldout_rm":
        if g.reward_model:
            from .checkpoints import check_checkpoint_dir

            check_checkpoint_dir(g.reward_model, "loop.gate.reward_model", tokenizer=True)
        elif cfg.task.get("pairs", "given") is None or "rm_warmup" not in lp.setup:
            raise ValueError("loop.gate.oracle=heldout_rm trains its reward model at setup (rm_warmup) on a share of the "
                             "seed pairs, and this run has none; give task.pairs=FILE or loop.gate.reward_model=DIR")
    if not uses:
        return
    from .labelers.judge import HTTPJudge, check_local_judge, check_template

    if j.template:
        check_template(j.template)
    if j.model:
        check_local_judge(j.model, cfg.model.trust_remote_code)
    else:
        HTTPJudge(j.url, model=j.model_name, timeout_s=j.timeout_s, retries=j.retries, concurrency=1,
                  api_key_env=j.api_key_env).probe()


def _run_dir_ledger(cfg) -> None:
    """A run dir's ledger that is not SQLite (damaged, or another file under its name) failed as a bare
    "DatabaseError: file is not a database" naming no file."""
    from omegaconf import OmegaConf

    from .ledger import LEDGER_FILENAME

    run_dir = OmegaConf.select(cfg, "run_dir", default=None, throw_on_resolution_failure=False)
    if run_dir and Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise ValueError(f"run_dir: {run_dir} is a file, not a folder")
    ledger = Path(run_dir) / LEDGER_FILENAME if run_dir else None  # None: Hydra's own new dir, resolved later
    if ledger is not None and ledger.is_file() and ledger.stat().st_size:
        with open(ledger, "rb") as f:
            head = f.read(100)
        if head[:16] != b"SQLite format 3\x00":
            raise ValueError(f"run_dir: {ledger} is not an SQLite database (damaged, or another file saved under "
                             "that name); restore it from a copy to resume, or use a new run_dir")
        # Without a WAL beside it, the file holds every page its header counts (when that count is valid: the
        # change counter at 24 equals the version-valid-for number at 92; sqlite.org/fileformat.html).
        wal = ledger.with_name(ledger.name + "-wal")
        page = int.from_bytes(head[16:18], "big")
        expected = (65536 if page == 1 else page) * int.from_bytes(head[28:32], "big")
        has_wal = wal.is_file() and wal.stat().st_size > 0
        if head[24:28] == head[92:96] and not has_wal and ledger.stat().st_size < expected:
            raise ValueError(f"run_dir: {ledger} is cut short ({ledger.stat().st_size} of the {expected} bytes its "
                             "header counts: an interrupted copy?); restore it from a copy to resume, or use a new run_dir")
        if not has_wal:  # a damaged page deeper in; with a WAL the ledger's own open checks (rlhf_ops.ledger)
            from .ledger import damage, damaged_message

            problem = damage(ledger)
            if problem is not None:
                raise ValueError("run_dir: " + damaged_message(ledger, problem))
