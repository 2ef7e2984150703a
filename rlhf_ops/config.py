"""Typed config schemas behind the YAML in conf/, registered with Hydra's ConfigStore.

The root `RunConfig` is stored as the `schema` node and is the first entry of conf/config.yaml's
defaults, so every YAML file and every command-line override is merged onto a structured config:
an unknown key or a wrong type fails at start-up (see `rlhf_ops.cli`), before any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from omegaconf import MISSING

from hydra.core.config_store import ConfigStore

MISSING_PATH = ""  # an unset path: stages fill it from the loop state or fail naming the key


class Choice(StrEnum):
    """A config choice: the YAML value is the member's name (and value); compares equal to it as a string."""


class Job(Choice):
    loop = "loop"; sft = "sft"; reward = "reward"; ppo = "ppo"; dpo = "dpo"; rloo = "rloo"; grpo = "grpo"  # noqa: E702
    rejection_sampling = "rejection_sampling"


class PolicyUpdate(Choice):
    ppo = "ppo"; dpo = "dpo"; rloo = "rloo"; grpo = "grpo"; rejection_sampling = "rejection_sampling"  # noqa: E702


class Labeler(Choice):
    annotator = "annotator"; reward_model = "reward_model"; human = "human"; judge = "judge"  # noqa: E702


class EnsembleReduce(Choice):
    mean = "mean"; min = "min"; uncertainty = "uncertainty"  # noqa: E702


class KLControllerKind(Choice):
    fixed = "fixed"; adaptive = "adaptive"  # noqa: E702


class Schedule(Choice):
    constant = "constant"; linear = "linear"; cosine = "cosine"  # noqa: E702


class DPOData(Choice):
    fresh = "fresh"; offline = "offline"  # noqa: E702


class DPOReference(Choice):
    sft = "sft"; policy = "policy"  # noqa: E702


class OnError(Choice):
    error = "error"; skip = "skip"  # noqa: E702


class PartialLabels(Choice):
    pause = "pause"; accept = "accept"; fallback = "fallback"  # noqa: E702


class RewardInit(Choice):
    policy = "policy"; scratch = "scratch"  # noqa: E702


class MixedPrecision(Choice):
    no = "no"; bf16 = "bf16"; fp16 = "fp16"  # noqa: E702


class WandbMode(Choice):
    offline = "offline"; online = "online"; disabled = "disabled"  # noqa: E702


class KLEstimator(Choice):
    k1 = "k1"; k3 = "k3"  # noqa: E702


class GateOracle(Choice):
    auto = "auto"; gold = "gold"; judge = "judge"; heldout_rm = "heldout_rm"; none = "none"  # noqa: E702


class GateOutcome(Choice):
    hard = "hard"; soft = "soft"  # noqa: E702


class GateTest(Choice):
    sequential = "sequential"; fixed = "fixed"  # noqa: E702


class GenerationBackend(Choice):
    hf = "hf"; vllm = "vllm"  # noqa: E702


@dataclass
class LoRAConfig:
    """LoRA adapters through peft (rlhf_ops/lora.py): the policy's adapter adapts the reference, which is the
    base with the adapter disabled (no second copy); checkpoints are adapters; SFT's is merged."""

    # Rank of the adapters; 0 = off (full fine-tuning).
    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    # Module names to adapt (q_proj, v_proj, ...), or ["all-linear"] (every linear layer but the output).
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # Which models get adapters: the policy (SFT, every policy update) and the reward model (warm-up, refreshes).
    policy: bool = True
    reward_model: bool = True



@dataclass
class ModelConfig:
    # Local HF checkpoint directory of a causal LM to start from; empty = build a tiny Llama from
    # the fields below with a tokenizer trained on the task's text.
    path: str = ""
    # Tiny-Llama shape (ignored when `path` is set).
    hidden_size: int = 96
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    max_position_embeddings: int = 256
    vocab_size: int = 1024
    # Where the reward model starts: policy (the SFT policy's backbone + a fresh head, usual) or
    # scratch (a fresh tiny model of the reward_* shape, e.g. a deliberately weak RM).
    reward_init: RewardInit = RewardInit.policy
    # Reward/value models: their own (often smaller) shape; 0 = same as the policy's.
    reward_hidden_size: int = 0
    reward_num_layers: int = 0
    # Remote code is never run unless a user asks for it.
    trust_remote_code: bool = False
    # Render text prompts with the tokenizer's chat template when it has one (conversational
    # prompts always are).
    apply_chat_template: bool = True
    # LoRA adapters instead of full fine-tuning (model.lora.r > 0).
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class GenerationConfig:
    """How collect and evaluate sample from a policy (rlhf_ops/generation.py)."""

    # hf (transformers' generate; CPU or GPU) | vllm (a vLLM engine; needs CUDA and `pip install vllm`, the
    # versions TRL supports). With vllm, RLOO and GRPO also generate with vLLM (TRL's use_vllm, colocated).
    backend: GenerationBackend = GenerationBackend.hf
    # vLLM: share of the GPU's memory its engine may take (the trainer needs the rest).
    gpu_memory_utilization: float = 0.3
    # vLLM: tensor-parallel degree of the engine.
    tensor_parallel_size: int = 1


@dataclass
class ReviewsTaskConfig:
    """task=reviews: the built-in testbed (rlhf_ops.tasks.reviews), with an exact gold reward."""

    _target_: str = "rlhf_ops.tasks.reviews.ReviewsTask"
    name: str = "reviews"
    seed: int = 0
    n_train_prompts: int = 600
    n_eval_prompts: int = 64
    n_gold_eval_prompts: int = 64
    # SFT demonstrations written by the task's grammar.
    sft_demos_per_prompt: int = 6
    # Keep only demonstrations at or above this gold reward (null = keep all).
    sft_min_gold: Optional[float] = None
    # Offline preference pairs for the reward-model warm-up (grammar samples, annotator labels).
    n_offline_pairs: int = 600
    # Which annotator of the default panel labels offline pairs.
    annotator: str = "careful"
    tokenizer_corpus_size: int = 3000
    # Capability anchors (held-out well-formed reviews) scored after every update; 0 = none.
    n_anchors: int = 32


@dataclass
class FilesTaskConfig:
    """task=files: the user's own data (rlhf_ops.tasks.files); no gold reward, no annotators."""

    _target_: str = "rlhf_ops.tasks.files.FilesTask"
    name: str = "files"
    # Prompts the loop samples from (required): .jsonl / .parquet / datasets folder, a 'prompt' column.
    prompts: str = ""
    # SFT demonstrations (prompt/completion or messages); null = the model is already fine-tuned.
    sft: Optional[str] = None
    # Seed preference pairs (prompt/chosen/rejected) for the RM warm-up; null = no warm-up.
    pairs: Optional[str] = None
    # Frozen evaluation prompts; null = a seeded share (eval_fraction, at most max_eval_prompts) of `prompts`.
    eval_prompts: Optional[str] = None
    eval_fraction: float = 0.1
    max_eval_prompts: int = 64
    # Share of the seed pairs held out to measure the reward model's accuracy.
    heldout_pair_fraction: float = 0.1
    seed: int = 0
    # Capability anchors in the SFT format (prompt + completion, or messages): references scored after every
    # policy update, so a policy that forgets them is caught (detector capability_anchors); null = none.
    anchors: Optional[str] = None


@dataclass
class SFTStageConfig:
    learning_rate: float = 3e-3
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    max_length: int = 96
    warmup_steps: int = 10
    weight_decay: float = 0.0
    # Recompute activations in the backward pass (TRL's default is on): saves activation memory at the
    # cost of about one more forward pass; off unless the model does not fit (docs/performance.md).
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    # Any other field of TRL's SFTConfig, passed by name (+stage.<name>.trl.max_grad_norm=0.5);
    # the fields above pass through by name too (rlhf_ops/stages/trl_args.py).
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardStageConfig:
    learning_rate: float = 5e-4
    num_train_epochs: float = 2.0
    max_steps: int = -1
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    max_length: int = 96
    # K members with different seeds and bootstrap resamples of the pairs (Coste et al. 2023).
    ensemble_size: int = 1
    bootstrap: bool = True
    # Fraction of pairs held out to measure accuracy (0 = none).
    eval_fraction: float = 0.1
    # Centre rewards around zero (TRL's center_rewards_coefficient).
    center_rewards_coefficient: Optional[float] = 0.01
    # Recompute activations in the backward pass (TRL's default is on): saves activation memory at the
    # cost of about one more forward pass; off unless the model does not fit (docs/performance.md).
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    # Any other field of TRL's RewardConfig, passed by name (+stage.<name>.trl.max_grad_norm=0.5);
    # the fields above pass through by name too (rlhf_ops/stages/trl_args.py).
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class PPOStageConfig:
    learning_rate: float = 3e-5
    # KL coefficient; the loop's controller overrides it per iteration (loop.kl.beta).
    kl_coef: float = "${loop.kl.beta}"  # type: ignore[assignment]  (one knob: loop.kl.beta)
    total_episodes: int = 256
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    num_mini_batches: int = 1
    num_ppo_epochs: int = 4
    response_length: int = 48
    temperature: float = 0.7
    # Penalty added to the score of a response with no EOS (null = none).
    missing_eos_penalty: Optional[float] = 1.0
    kl_estimator: KLEstimator = KLEstimator.k1
    cliprange: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    local_rollout_forward_batch_size: int = 64
    # Recompute activations in the backward pass (TRL's default is on): saves activation memory at the
    # cost of about one more forward pass; off unless the model does not fit (docs/performance.md).
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    # Any other field of TRL's trl.experimental.ppo.PPOConfig, passed by name (+stage.<name>.trl.max_grad_norm=0.5);
    # the fields above pass through by name too (rlhf_ops/stages/trl_args.py).
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class GroupRLStageConfig:
    """stage.rloo and stage.grpo: TRL's RLOOConfig / GRPOConfig fields by name (rlhf_ops/stages/group_rl.py)."""
    learning_rate: float = 3e-5
    # KL coefficient against the reference; the loop's controller overrides it per iteration (loop.kl.beta).
    beta: float = "${loop.kl.beta}"  # type: ignore[assignment]  (one knob: loop.kl.beta)
    # completions per prompt: each one's baseline is the others' mean reward
    num_generations: int = 4
    # completions per optimizer step (a multiple of num_generations)
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1
    # new tokens per completion
    max_completion_length: int = 48
    temperature: float = 0.7
    # Subtracted from the reward of a completion that never emitted EOS (null = none; ours, as PPO's).
    missing_eos_penalty: Optional[float] = 1.0
    # Optimizer passes over each generated batch (PPO's num_ppo_epochs)
    num_iterations: int = 4
    epsilon: float = 0.2
    # Recompute activations in the backward pass (TRL's default is on): off unless the model does not fit.
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class DPOStageConfig:
    learning_rate: float = 5e-5
    beta: float = 0.1
    loss_type: str = "sigmoid"
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_length: int = 128
    # Recompute activations in the backward pass (TRL's default is on): saves activation memory at the
    # cost of about one more forward pass; off unless the model does not fit (docs/performance.md).
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    # Any other field of TRL's DPOConfig, passed by name (+stage.<name>.trl.max_grad_norm=0.5);
    # the fields above pass through by name too (rlhf_ops/stages/trl_args.py).
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class StagesConfig:
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)
    ppo: PPOStageConfig = field(default_factory=PPOStageConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    rloo: GroupRLStageConfig = field(default_factory=GroupRLStageConfig)
    grpo: GroupRLStageConfig = field(default_factory=GroupRLStageConfig)
    # SFT on the reward model's best of the collected completions per prompt (loop.policy_update=
    # rejection_sampling): fine-tuning a trained policy, so a smaller step than SFT from scratch.
    rejection_sampling: SFTStageConfig = field(default_factory=lambda: SFTStageConfig(
        learning_rate=3e-4, num_train_epochs=2.0, per_device_train_batch_size=16, warmup_steps=0))


@dataclass
class LauncherConfig:
    # 1 = train in the orchestrator's own process; >1 = `accelerate launch --num_processes N`.
    num_processes: int = 1
    # Path to a DeepSpeed JSON (relative paths resolve against the repo's conf/ folder); empty = none.
    deepspeed: str = ""
    mixed_precision: MixedPrecision = MixedPrecision.no
    # Extra `accelerate launch` arguments, e.g. ["--main_process_port", "29511"].
    extra_args: list[str] = field(default_factory=list)
    # Seconds before a launched stage is killed (0 = no limit).
    timeout_s: int = 0


@dataclass
class IOConfig:
    """Paths for running one stage on its own (job=sft|reward|ppo|dpo)."""

    policy: str = MISSING_PATH
    ref: str = MISSING_PATH
    reward_model: str = MISSING_PATH
    value_model: str = MISSING_PATH
    data: str = MISSING_PATH
    output: str = MISSING_PATH


@dataclass
class KLConfig:
    # fixed | adaptive (the proportional controller of Ziegler et al. 2019)
    controller: KLControllerKind = KLControllerKind.fixed
    beta: float = 0.05
    target: float = 2.0
    horizon: int = 1000
    # Bounds of the adaptive controller's beta (the fixed controller keeps beta as given, below max_beta).
    min_beta: float = 1e-4
    max_beta: float = 10.0
    # When the raise_beta remedy fires, beta becomes at least this (x2 of zero is still zero).
    remedy_min_beta: float = 0.02
    # Beta multiplier over iterations: constant | linear | cosine from start_mult to end_mult.
    schedule: Schedule = Schedule.constant
    start_mult: float = 1.0
    end_mult: float = 1.0


@dataclass
class JudgeConfig:
    """An LLM judge (rlhf_ops/labelers/judge.py): a local model directory or an OpenAI-compatible server."""

    # A local causal-LM directory with a chat template (the judge runs in this process) ...
    model: str = ""
    # ... or the address of an OpenAI-compatible chat-completions server (http://host:port[/v1]).
    url: str = ""
    # The `model` field sent to the server (vLLM and OpenAI need it; rlhf_ops.serve ignores it).
    model_name: str = ""
    # The environment variable holding the server's API key (empty = no Authorization header).
    api_key_env: str = ""
    # The judge's instructions (system turn); empty = the built-in helpfulness rubric.
    rubric: str = ""
    # The user turn, with {question}, {a} and {b}; empty = the built-in template.
    template: str = ""
    # A comparison is a tie when the order-averaged preference is within this of 0.5.
    tie_margin: float = 0.05
    # Local judge: prompts per forward pass.
    batch_size: int = 8
    # Server: seconds per request, retries (connection errors, 429, 5xx) and requests in flight.
    timeout_s: float = 60.0
    retries: int = 3
    concurrency: int = 4


@dataclass
class GateConfig:
    """The gate's head-to-head test of a candidate against the last good policy (loop.min_win_rate is its threshold)."""

    # Who judges it: gold (the task's gold reward) | judge (loop.judge) | heldout_rm (a reward model
    # PPO never optimizes: gate.reward_model, or one trained at setup on gate.rm_share of the seed
    # pairs, which the proxy RM then never sees) | none | auto (judge when loop.judge is set, else gold
    # when the task has it).
    oracle: GateOracle = GateOracle.auto
    reward_model: str = ""
    rm_share: float = 0.5
    # sequential (an anytime-valid betting confidence sequence: stops as soon as it can tell) | fixed
    # (every comparison, then the point estimate).
    test: GateTest = GateTest.sequential
    # Error level of the sequential test's confidence sequence.
    alpha: float = 0.05
    # At most this many candidate-vs-last-good comparisons per gate (each is two judge calls), and at
    # least min_comparisons before the sequential test may stop.
    max_comparisons: int = 64
    min_comparisons: int = 16
    # Comparisons per judge batch (the sequential test looks after each).
    batch: int = 8
    # What one comparison scores: hard (1 win, 0 loss, 0.5 tie: a win rate, as gold's) | soft (the
    # judge's order-averaged probability, AlpacaEval-style; an unsure judge pulls every score to 0.5).
    outcome: GateOutcome = GateOutcome.hard
    # A judge that calls more than this share of comparisons a tie (a judge that only picks a position, as
    # SmolLM2-135M does) tells nothing: the head-to-head is reported as skipped, never passed quietly.
    max_tie_rate: float = 0.8
    # Also reject a candidate whose length-controlled win rate is below the threshold while it is
    # longer than the last good policy (it wins by writing more).
    length_controlled: bool = True


@dataclass
class LoopConfig:
    # online_ppo | iterative_dpo | offline_dpo | stages_once
    name: str = "online_ppo"
    # The recipe (rlhf_ops/loop/recipe.py): setup steps run once, then `steps` every iteration, in order.
    setup: list[str] = field(default_factory=lambda: ["prepare", "sft", "rm_warmup", "baseline"])
    steps: list[str] = field(default_factory=lambda: ["collect", "label", "rm_update", "policy_update", "evaluate",
                                                      "gate", "prune"])
    iterations: int = 3
    # Prompts collected per iteration and completions per prompt.
    prompts_per_iteration: int = 64
    completions_per_prompt: int = 2
    # Fewer usable pairs than this from an iteration's labeler (ties and identical sides are not usable)
    # and the iteration is abandoned and rolled back, never trained on; 4 is the least an RM update uses.
    min_pairs: int = 4
    # Policy update: ppo | dpo
    policy_update: PolicyUpdate = PolicyUpdate.ppo
    # DPO's pairs: fresh (this iteration's labels: iterative DPO) | offline (the fixed warm-up set)
    dpo_data: DPOData = DPOData.fresh
    # DPO's reference: sft (the loop's reference, fixed: the KL budget is measured to it) | policy (the policy
    # the iteration starts from, as in Xiong et al. 2024's iterative DPO: each iteration a new trust region)
    dpo_reference: DPOReference = DPOReference.sft
    # Gold evaluation: completions per frozen gold-eval prompt; temperature (null = PPO's).
    eval_samples_per_prompt: int = 2
    eval_temperature: Optional[float] = None
    # What to do with malformed rows of an imported human-label file: error | skip
    human_labels_on_error: OnError = OnError.error
    # A labels file that labels only some of the exported pairs: pause (again, saying how many are left) |
    # accept (train on the labelled ones) | fallback (the current reward model labels the rest, per row)
    human_labels_partial: PartialLabels = PartialLabels.pause
    # Labeler of fresh completions: annotator | reward_model | human | judge (loop.judge)
    labeler: Labeler = Labeler.annotator
    annotator: str = "careful"
    # RM update schedule: every N iterations (null = never by count), on KL since last update.
    rm_update_every: Optional[int] = 1
    rm_update_kl_threshold: Optional[float] = None
    rm_freeze: list[list[int]] = field(default_factory=list)
    # Adversarial refresh: refresh the RM (whatever its schedule, outside a freeze window) when it ranks more
    # than this share of the iteration's fresh labels (the judge's, a person's) the other way (null = off);
    # the pairs it got wrong appear rm_hard_pair_repeat times in the refresh's training mix.
    rm_update_disagreement: Optional[float] = None
    rm_hard_pair_repeat: int = 1
    # Plateau refresh: refresh the RM (whatever its schedule, outside a freeze window) when none of the last
    # K gated iterations won its head-to-head by more than rm_update_plateau_margin (null = off).
    rm_update_plateau: Optional[int] = None
    rm_update_plateau_margin: float = 0.02
    # Adversarial pairs: when the gate rejects a candidate, its evaluation samples are labelled (by
    # loop.labeler) against the last good policy's, and the next RM refresh trains on them this many
    # times over (source "adversarial" in the pairs' provenance); 0 = off.
    rm_adversarial_repeat: int = 0
    # Share of replayed old pairs in each RM update's training mix.
    rm_replay_ratio: float = 0.5
    # Share of the fresh pairs held out to validate an RM update (old vs new accuracy).
    rm_heldout_fraction: float = 0.25
    # A refresh is kept unless its held-out accuracy drops by more than
    # tolerance + z * SE(paired difference): a drop the held-out pairs can tell from noise.
    rm_accuracy_tolerance: float = 0.02
    rm_accuracy_z: float = 1.645
    # How PPO combines an RM ensemble: mean | min | uncertainty
    ensemble_reduce: EnsembleReduce = EnsembleReduce.mean
    ensemble_lambda: float = 1.0
    kl: KLConfig = field(default_factory=KLConfig)
    # Learning-rate multiplier over iterations.
    lr_schedule: Schedule = Schedule.constant
    lr_end_mult: float = 1.0
    # Gate: detectors (list of dicts, see rlhf_ops.control.detectors) and the head-to-head rule.
    detectors: list[Any] = field(default_factory=list)
    gate_vote: str = "any"
    min_win_rate: Optional[float] = 0.4
    gate: GateConfig = field(default_factory=GateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    beta_remedy_factor: float = 2.0
    lr_remedy_factor: float = 0.5
    # Stop the run (status "stopped") once this many iterations have been rolled back (null = never).
    max_rollbacks: Optional[int] = 5
    # Retention: keep checkpoints of the last K iterations (null = keep everything), plus every
    # checkpoint the state points to, plus accepted policies if keep_accepted.
    keep_last: Optional[int] = 2
    keep_accepted: bool = True


@dataclass
class TrackingConfig:
    # wandb mode: offline (no account needed) | online | disabled
    wandb_mode: WandbMode = WandbMode.offline
    project: str = "rlhf_ops"
    group: str = ""


@dataclass
class RunConfig:
    # What to run: loop | sft | reward | ppo | dpo | build_models
    job: Job = Job.loop
    # Experiment name (set by conf/experiment/*.yaml).
    name: str = "default"
    # The run directory: ledger + artifacts; re-running on the same run_dir resumes.
    run_dir: str = "${hydra:runtime.output_dir}"
    seed: int = 0
    # Replace a finished stage's outputs instead of refusing.
    overwrite: bool = False
    # Resume even if the config differs from the one the run dir was started with.
    allow_config_change: bool = False
    # Print a progress bar for long steps.
    progress: bool = True
    # Show everything the libraries print (TRL, transformers, datasets, wandb) on the console; by
    # default it goes to a log file per step (RUN_DIR/logs/) and the console has one line per step.
    verbose: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # A task's own schema (ReviewsTaskConfig, FilesTaskConfig: conf/task/*.yaml picks one).
    task: Any = MISSING
    stage: StagesConfig = field(default_factory=StagesConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    io: IOConfig = field(default_factory=IOConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=RunConfig)
    cs.store(group="task", name="reviews_schema", node=ReviewsTaskConfig)
    cs.store(group="task", name="files_schema", node=FilesTaskConfig)


register_configs()
