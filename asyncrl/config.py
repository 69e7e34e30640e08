"""The one typed configuration of an asyncrl run, read from one TOML file.

Every process (learner, rollout generators, reward workers, the launcher) reads the
same file into :class:`RunConfig`. A role's own section (rollout, reward, learner,
algorithm) is read by that role; a key more than one role reads lives in a shared section
(sampling, weight_sync, liveness, transport, ...); the keys' old homes are deprecated
aliases (:mod:`asyncrl.config_moved`). ``[algorithm]`` refuses keys that do not apply
(:mod:`asyncrl.config_algorithm`). Unknown keys, wrong types and impossible combinations
raise :class:`ConfigError` naming the key path, before any process starts; ``asyncrl up``
writes what each process reads to ``<run dir>/resolved/`` (:mod:`asyncrl.resolved`)::

    cfg = load_config("configs/tiny_cpu.toml", overrides=["learner.lr=1e-3"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from asyncrl.config_algorithm import AlgorithmSection
from asyncrl.config_base import ConfigError, _Section, parse_address
from asyncrl.config_env import EnvironmentSection
from asyncrl.config_load import apply_override, format_errors, read_toml
from asyncrl.config_moved import ALIASES, RootRef, move_aliases, moved

__all__ = ["AlgorithmSection", "ConfigError", "EnvironmentSection", "RunConfig", "apply_override", "dump_config",
           "load_config", "parse_address", "validate_config"]



class RunSection(_Section):
    """Where a run writes, how long it lasts, and its seed."""

    dir: Path = Field(Path("runs/default"), description="Run directory: metrics.jsonl, logs, checkpoints.")
    max_steps: int = Field(20, ge=1, description="Learner optimiser steps before the run ends.")
    seed: int = Field(0, description="Seed for data order, sampling engines and model init.")
    resume: bool = Field(False, description="Continue from the newest complete checkpoint in dir/checkpoints "
                         "(`--resume` on the command line).")
    max_restarts: int = Field(3, ge=0, description="`asyncrl up` restarts a generator or reward worker that "
                              "dies (any signal) up to this many times each, with doubling back-off; also "
                              "bounds learner restarts when restart_learner is on.")
    restart_backoff_s: float = Field(2.0, ge=0, description="First restart delay; doubles per restart.")
    restart_learner: bool = Field(False, description="When the learner dies, restart the whole run from the "
                                  "newest checkpoint (--resume) instead of stopping.")


class ModelSection(_Section):
    """The policy: any local HF causal-LM directory."""

    path: Path = Field(description="HF model directory (config.json, weights, tokenizer).")
    learner_dtype: Literal["float32", "bfloat16"] = "float32"


class ValSetSection(_Section):
    """One ``[[data.val]]`` validation set: scored every ``learner.val_every`` steps (and at the start
    and end), logged as ``val/<name>/accuracy``, ``mean@<n>``, ``pass@<k>``, ``maj@<n>``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Key prefix val/<name>/ (letters, digits, _ . -).")
    path: Path = Field(description="Parquet file in veRL's schema.")
    n: int = Field(1, ge=1, description="Replies per prompt (pass@k for k = 1, 2, 4, ... <= n).")
    temperature: float = Field(0.0, ge=0.0, description="0: greedy (then n must be 1). Sampled sets are seeded "
                               "per (run.seed, set, prompt), so every validation of a run draws alike.")
    max_prompts: int | None = Field(None, ge=1, description="First N prompts of the file (default: all).")
    max_new_tokens: int | None = Field(None, ge=1, description="Reply length limit (default: sampling.max_new_tokens).")

    @model_validator(mode="after")
    def _check_greedy(self) -> ValSetSection:
        if self.temperature == 0 and self.n > 1:
            raise ValueError(f"n={self.n} at temperature 0 would be {self.n} identical greedy replies; set "
                             f"temperature > 0 or n = 1")
        return self


class DataSection(_Section):
    """Prompt data in veRL's parquet schema (see asyncrl.data.format)."""

    train: Path = Field(description="Training parquet file.")
    test: Path | None = Field(None, description="Validation parquet file (greedy scoring, learner.val_prompts "
                              "prompts; logged as val_accuracy / val_reward_mean).")
    val: list[ValSetSection] = Field(default_factory=list, description="More validation sets ([[data.val]] "
                                     "tables), each with its own n and temperature, logged under val/<name>/.")
    max_prompt_tokens: int = Field(256, ge=1, description="Longer prompts are dropped (counted).")
    shuffle: bool = True

    @model_validator(mode="after")
    def _check_val_names(self) -> DataSection:
        names = [v.name for v in self.val]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"data.val[{i}].name: {name!r} is used by data.val[{names.index(name)}] too; "
                                 f"names must differ (they are the metric keys' prefix)")
        return self


class RolloutSection(_Section):
    """vLLM generators."""

    num_generators: int = Field(1, ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="vLLM weights/compute (also the weight-sync dtype); auto: bfloat16 on GPUs and CPUs "
        "with native bf16 (AVX512-BF16/AMX), float32 elsewhere (bf16 is ~10x slower there).")
    max_inflight_prompts: int = Field(8, ge=1, description="Prompts each generator keeps in flight.")
    kv_cache_gb: float = Field(
        1.0, gt=0, description="KV cache of each engine worker on CPU (vLLM's kv_cache_memory_bytes; a "
        "VLLM_CPU_KVCACHE_SPACE set in the environment overrides it). vLLM builds the cache block by block at "
        "start-up, so a tiny model wants little (1 GiB holds 1.6M of its tokens and costs 7-12 s there). "
        "Unused on GPUs, where gpu_memory_utilization sizes the cache.")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1.0)
    enforce_eager: bool = True
    max_model_len: int | None = None
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM workers per generator (GPUs on a GPU host, "
                                      "core sets on CPU, see [placement]); each keeps only its shard of every "
                                      "weight sync.")
    weight_apply: Literal["auto", "inplace", "reload"] = Field(
        "auto", description="How generators apply a weight sync: inplace copies into the live parameters "
        "(fast; only correct when every layer computes from its weight parameter, checked at the first "
        "sync), reload uses vLLM's layer-wise reload_weights; auto: inplace where that check passes.")
    _root: RootRef = PrivateAttr(default_factory=RootRef)
    n = moved("rollout.n")  # type: ignore[pydantic-field]
    temperature = moved("rollout.temperature")  # type: ignore[pydantic-field]
    top_p = moved("rollout.top_p")  # type: ignore[pydantic-field]
    max_new_tokens = moved("rollout.max_new_tokens")  # type: ignore[pydantic-field]
    heartbeat_s = moved("rollout.heartbeat_s")  # type: ignore[pydantic-field]
    learner_timeout_s = moved("rollout.learner_timeout_s")  # type: ignore[pydantic-field]


class SamplingSection(_Section):
    """How generators sample; the learner reads the same values (group size, log-prob temperature, length)."""

    n: int = Field(4, ge=1, description="Samples per prompt (the GRPO group size).")
    max_new_tokens: int = Field(64, ge=1, description="Response length limit (also DAPO's overlong L_max).")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature; the learner's log-probs are "
                               "taken at the same temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)


class WeightSyncSection(_Section):
    """The learner -> generators weight broadcast; the learner and every generator read it."""

    address: str = Field("127.0.0.1:5570", description="host:port of the torch.distributed TCPStore of the "
                         "sync group (the learner hosts it).")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Weight broadcast backend: auto is nccl with CUDA, else gloo. Use gloo when the "
        "learner and a generator share a GPU (placement.allow_overlap): NCCL refuses two ranks on one GPU.")
    bucket_mb: int = Field(64, ge=1, description="Weight-broadcast bucket size in MiB.")
    timeout_s: float = Field(600.0, gt=0, description="Timeout for weight-sync rendezvous/broadcast.")

    @model_validator(mode="after")
    def _check_address(self) -> WeightSyncSection:
        parse_address(self.address)
        return self


class LivenessSection(_Section):
    """Heartbeats between generators and the learner, and how long each side waits for the other."""

    heartbeat_s: float = Field(2.0, gt=0, description="Seconds between a generator's heartbeats to the learner.")
    generator_timeout_s: float = Field(
        30.0, gt=0, description="A generator silent this long (no heartbeat) is declared gone: its prompts are "
        "dispatched again and the weight-sync group is re-formed without it; also the longest wait for a "
        "generator to join a re-formed group.")
    learner_timeout_s: float = Field(300.0, gt=0, description="A generator that hears nothing from the learner "
                                     "(not even a heartbeat answer) this long exits with an error naming it.")


class RewardSection(_Section):
    """Reward workers: function rewards chosen by data_source (or forced), a reward model, or both."""

    num_workers: int = Field(1, ge=1)
    type: Literal["function", "model", "mixed"] = Field(
        "function", description="mixed: function_weight * function + model_weight * model score.")
    function: str | None = Field(None, description="Force one reward function for every sample "
                                 "(registry name, module:function or path/to/file.py:function).")
    timeout_s: float = Field(5.0, gt=0, description="Per-sample limit; a hung function scores 0.")
    model_path: Path | None = Field(None, description="HF sequence-classification reward model directory.")
    model_batch_size: int = Field(16, ge=1)
    model_max_tokens: int = Field(2048, ge=8, description="Prompt+response tokens scored (left-truncated).")
    function_weight: float = 1.0
    model_weight: float = 1.0

    @model_validator(mode="after")
    def _check_model(self) -> RewardSection:
        if self.type != "function" and self.model_path is None:
            raise ValueError(f"reward.type={self.type!r} needs reward.model_path")
        return self


LORA_DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSection(_Section):
    """LoRA adapters (PEFT) trained instead of the whole model; ``rank = 0``: full fine-tuning.

    The base stays frozen; the reference model is the same base with the adapters switched off
    (no second copy), and a weight sync sends only the adapter (plus ``modules_to_save``) to the
    generators, which serve it as the engine's active vLLM LoRA."""

    rank: int = Field(0, ge=0, le=512, description="LoRA rank r; 0 turns LoRA off (full fine-tuning).")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator: updates are scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input while training.")
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_DEFAULT_TARGETS), min_length=1,
                                      description="Module names (suffixes) that get adapters: the attention "
                                      "and MLP projections by default.")
    modules_to_save: list[str] = Field(default_factory=list, description="Modules trained in full next to "
                                       "the adapters (e.g. 'norm'); synced as full tensors. Tied embeddings "
                                       "and LM heads are refused.")
    merged_export: bool = Field(True, description="Exports (final, checkpoints' hf/) hold the merged model "
                                "that vLLM and transformers load, with the PEFT adapter in adapter/; "
                                "false: the adapter alone.")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


class ShardingFields(_Section):
    """How the learner lays out batches, how its FSDP2 units compute and where they keep state
    (shared by RL, SFT and reward-model training)."""

    max_tokens_per_microbatch: int | None = Field(
        None, ge=1, description="Token budget per forward/backward pass (packed: sum of lengths; padded: "
        "count x longest). None: only the micro-batch size limits a micro-batch.")
    packing: bool = Field(True, description="Pack several samples per row with restarting position ids "
                          "(pad only at row ends); False: one right-padded row per sample.")
    pack_row_tokens: int | None = Field(
        None, ge=1, description="Row length when packing (at least the longest sample). None: the longest "
        "sample of the micro-batch, which bounds attention cost on CPU; with flash-attention on GPU set it "
        "to max_tokens_per_microbatch for one row per micro-batch.")

    mixed_precision: bool = Field(False, description="FSDP2 mixed precision: bf16 parameters and compute, "
                                  "fp32 gradient reduction and fp32 master weights (load with "
                                  "model.learner_dtype = float32); ignored, with a warning, on CPUs "
                                  "without native bf16.")
    attn_implementation: Literal["eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3"] | None = \
        Field(None, description="The learner's attention kernel (transformers' attn_implementation). None: "
              "transformers' default (sdpa). On CPU with short rows (a few hundred tokens) eager measured faster "
              "than sdpa's flash kernel (benchmarks/bench_learner.py); flash_attention_2 needs flash-attn (GPU).")
    gradient_checkpointing: bool = Field(False, description="Recompute layer activations in backward.")
    cpu_offload: bool = Field(False, description="Keep parameters, gradients and optimizer state in CPU "
                              "memory between uses (GPU only; FSDP2 CPUOffloadPolicy).")
    lora: LoraSection = Field(default_factory=LoraSection)


class LearnerSection(ShardingFields):
    """Training: GRPO advantages, PPO-clip with truncated IS, AdamW."""

    prompts_per_step: int = Field(4, ge=1, description="Groups (prompts) per optimiser step.")
    world_size: int = Field(1, ge=1, description="Learner ranks (FSDP2 data parallel; `asyncrl up` starts "
                            "them with torchrun). Rank 0 alone talks to generators and reward workers.")
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(8, ge=1, description="Max samples per forward/backward pass.")
    ppo_mini_batches: int = Field(1, ge=1, description="Optimiser steps per pass over a batch: its groups split "
                                  "evenly into this many mini-batches (must divide prompts_per_step).")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each batch. A batch makes ppo_mini_batches x "
                            "ppo_epochs optimiser steps and still counts as one learner step (max_steps, policy "
                            "version, sync/validation/checkpoint cadence, LR schedule).")
    autocast_bf16: bool = Field(False, description="bf16 autocast for learner compute (fp32 master weights); "
                                "ignored, with a warning, on CPUs without native bf16.")
    nnodes: int = Field(1, ge=1, description="Hosts the learner's ranks span (torchrun across nodes); "
                        "world_size must be a multiple of it. Start each node with "
                        "`asyncrl learner CONFIG --node-rank R`.")
    rdzv_endpoint: str | None = Field(None, description="host:port of the learner's node 0 for the torchrun "
                                      "rendezvous; required when nnodes > 1.")
    rendezvous_timeout_s: float = Field(300.0, gt=0, description="Longest wait for every learner node to join; "
                                        "then the learner exits naming the missing side.")
    max_staleness: int = Field(1, ge=0, description="Max policy versions between generation and training.")
    sync_every: int = Field(1, ge=1, description="Broadcast weights to generators every N steps.")
    val_every: int = Field(0, ge=0, description="Validate every N steps (0: only at start and end).")
    val_prompts: int = Field(64, ge=1, description="Test prompts scored per validation.")
    wait_timeout_s: float = Field(600.0, gt=0, description="Max wait for a batch before failing loudly.")
    redispatch_after_s: float = Field(
        600.0, ge=0, description="A dispatched prompt whose scored group has not arrived after this long is "
        "presumed lost with a dead worker and dispatched again (a late original is dropped as a duplicate); "
        "0: never.")
    save_final: bool = True
    warmup_steps: int = Field(0, ge=0, description="Linear LR warm-up over this many steps (then constant).")
    checkpoint_every: int = Field(0, ge=0, description="Resumable checkpoint (sharded model + optimizer, "
                                  "data position, RNG, HF export) every N steps and at the end; 0: only at the end "
                                  "(see checkpoint_final).")
    checkpoint_final: bool = Field(True, description="Also write a resumable checkpoint at the last step "
                                   "(run.max_steps), so a finished run continues to a larger total with "
                                   "`asyncrl up CONFIG --resume --max-steps M`.")
    keep_checkpoints: int = Field(2, ge=1, description="Resumable checkpoints kept (oldest removed).")
    _root: RootRef = PrivateAttr(default_factory=RootRef)
    bucket_mb = moved("learner.bucket_mb")  # type: ignore[pydantic-field]
    sync_timeout_s = moved("learner.sync_timeout_s")  # type: ignore[pydantic-field]
    generator_timeout_s = moved("learner.generator_timeout_s")  # type: ignore[pydantic-field]

    @model_validator(mode="after")
    def _check_mini_batches(self) -> LearnerSection:
        if self.prompts_per_step % self.ppo_mini_batches:
            raise ValueError(f"learner.prompts_per_step={self.prompts_per_step} is not divisible by "
                             f"learner.ppo_mini_batches={self.ppo_mini_batches}: each mini-batch takes "
                             f"prompts_per_step / ppo_mini_batches whole groups")
        return self


class PlacementSection(_Section):
    """Which devices (GPU hosts) or CPU cores (CPU hosts) each process of this host gets.

    Device lists use CUDA_VISIBLE_DEVICES-style ids (``"0,1"``, ``"2-3"``) on GPU hosts and CPU ids on
    CPU hosts. A generator's entry names ``rollout.tensor_parallel_size`` devices; on CPU ``|``
    separates its TP workers' core sets as vLLM does (``"0|1"``; without ``|`` the cores are split
    evenly). Nothing set: the plan is automatic (learner first, then each generator, then reward
    models); ``asyncrl up --dry-run CONFIG`` prints it. See asyncrl/placement.py.
    """

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when GPUs are visible.")
    learner: str | None = Field(None, description="Devices (GPU: one per local learner rank) or cores of the "
                                "learner on its host(s).")
    generators: list[str] | None = Field(None, description="One device/core list per generator.")
    reward: list[str] | None = Field(None, description="One device/core list per reward worker (GPU: reward "
                                     "models; function rewards need none).")
    allow_overlap: bool = Field(False, description="GPU: let roles share devices (refused otherwise). On CPU "
                                "sharing cores is always allowed.")
    learner_threads: int | None = Field(None, ge=1, description="torch CPU threads per learner rank.")
    generator_threads: int | None = Field(None, ge=1, description="CPU threads per generator engine (OMP_NUM_THREADS).")


class TransportSection(_Section):
    """Addresses (host:port). Binds default to loopback; the same file works across hosts."""

    dispatch: str = Field("127.0.0.1:5555", description="Learner ROUTER: prompts out, control in.")
    trajectories: str = Field("127.0.0.1:5556", description="Learner PULL: scored trajectories in.")
    rewards: list[str] = Field(default_factory=lambda: ["127.0.0.1:5560"],
                               description="One address per reward worker (PULL).")
    bind_host: str | None = Field(None, description="Interface to bind instead of each address's host.")
    max_message_mb: int = Field(256, ge=1, description="Larger incoming messages are rejected.")
    curve_dir: Path | None = Field(None, description="ZeroMQ CURVE keys (`asyncrl keys --out DIR`): encrypt "
                                   "every socket, accept only authorized clients. Use it when binding "
                                   "beyond loopback.")
    _root: RootRef = PrivateAttr(default_factory=RootRef)
    weight_sync = moved("transport.weight_sync")  # type: ignore[pydantic-field]
    weight_sync_backend = moved("transport.weight_sync_backend")  # type: ignore[pydantic-field]

    @model_validator(mode="after")
    def _check_addresses(self) -> TransportSection:
        for name in ("dispatch", "trajectories"):
            parse_address(getattr(self, name))
        for addr in self.rewards:
            parse_address(addr)
        return self


class LoggingSection(_Section):
    """Where metrics go besides <run.dir>/metrics.jsonl (trackers: asyncrl/trackers/), and log levels."""

    wandb: bool = Field(False, description="Log each step's scalars and the config to wandb.")
    wandb_project: str = Field("asyncrl", description="wandb project.")
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="wandb mode; offline writes under run.dir (`wandb sync` uploads it later).")
    mlflow: bool = Field(False, description="Log each step's scalars, the config (as params and config.json) "
                         "to MLflow; needs `pip install -e '.[trackers]'`. A resumed run continues its MLflow run.")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI (http://host:5000, "
                                            "sqlite:///path.db, ...); default: sqlite:///<run.dir>/mlflow.db.")
    mlflow_experiment: str = Field("asyncrl", min_length=1, description="MLflow experiment (created if missing).")
    tensorboard: bool = Field(False, description="Write TensorBoard event files: scalars per step, the config "
                              "as text and hparams; needs `pip install -e '.[trackers]'`.")
    tensorboard_dir: Path | None = Field(None, description="TensorBoard log dir; default <run.dir>/tensorboard.")
    samples_every: int = Field(10, ge=0, description="Every N steps write the step's trained samples (prompt, "
                               "response, reward, reward error, policy version, staleness, learner-minus-behaviour "
                               "log-prob) to <run.dir>/samples/train_step_N.parquet; every validation's go to "
                               "val_step_N.parquet. `asyncrl samples RUN_DIR` prints them. 0: none.")
    console: bool = True
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class RunConfig(_Section):
    """The root config: one section per process plus shared ones.

    A key more than one role reads lives in a shared section (run, model, data, sampling,
    weight_sync, liveness, transport, placement, logging); a role's own section (rollout,
    reward, learner, algorithm) is read by that role alone (the learner and the launcher also
    read the generators' count, tensor-parallel size and dtype: the shape of the sync group).
    """

    ALIASES: ClassVar[dict[str, str]] = ALIASES

    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection
    data: DataSection
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    weight_sync: WeightSyncSection = Field(default_factory=WeightSyncSection)
    liveness: LivenessSection = Field(default_factory=LivenessSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    learner: LearnerSection = Field(default_factory=LearnerSection)
    algorithm: AlgorithmSection = Field(default_factory=AlgorithmSection)
    environment: EnvironmentSection = Field(default_factory=EnvironmentSection)
    transport: TransportSection = Field(default_factory=TransportSection)
    placement: PlacementSection = Field(default_factory=PlacementSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Keys that moved to [placement] get an error saying where, not just 'unknown key'; keys that
        moved to a shared section are read there (deprecated aliases, one warning each)."""
        if isinstance(data, dict):
            for section, key, new in MOVED_KEYS:
                if isinstance(data.get(section), dict) and key in data[section]:
                    raise ValueError(f"{section}.{key} moved to {new}")
            data = move_aliases({k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}, "config")
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        for section in (self.rollout, self.learner, self.transport):
            section._root = RootRef(self)  # their deprecated read aliases of moved keys
        lr, s = self.learner, self.sampling
        if lr.world_size % lr.nnodes:
            raise ValueError(f"learner.world_size={lr.world_size} is not a multiple of learner.nnodes={lr.nnodes}")
        if lr.nnodes > 1 and lr.rdzv_endpoint is None:
            raise ValueError(f"learner.nnodes={lr.nnodes} needs learner.rdzv_endpoint (host:port of node 0)")
        if lr.rdzv_endpoint is not None:
            parse_address(lr.rdzv_endpoint)
        p = self.placement
        if p.allow_overlap and self.weight_sync.backend == "nccl":
            raise ValueError("placement.allow_overlap with weight_sync.backend = 'nccl': NCCL refuses "
                             "two ranks on one GPU; use 'gloo' (or 'auto', which then picks gloo)")
        for key, entries, count in (("generators", p.generators, self.rollout.num_generators),
                                    ("reward", p.reward, self.reward.num_workers)):
            if entries is not None and len(entries) != count:
                raise ValueError(f"placement.{key} has {len(entries)} entr(ies) but {count} "
                                 f"{'generator(s)' if key == 'generators' else 'reward worker(s)'} are configured")
        if lr.max_staleness < lr.sync_every - 1:
            raise ValueError(
                f"learner.max_staleness={lr.max_staleness} is impossible with learner.sync_every="
                f"{lr.sync_every}: generators lag up to sync_every-1 versions; set max_staleness >= "
                f"{lr.sync_every - 1}")
        per_update = lr.prompts_per_step // lr.ppo_mini_batches * s.n
        if lr.world_size > per_update:
            raise ValueError(f"learner.world_size={lr.world_size} exceeds the samples per optimiser step "
                             f"(learner.prompts_per_step / learner.ppo_mini_batches x sampling.n = {per_update})")
        t = self.transport
        if len(t.rewards) != self.reward.num_workers:
            raise ValueError(
                f"transport.rewards has {len(t.rewards)} address(es) but reward.num_workers="
                f"{self.reward.num_workers}; give one address per reward worker")
        a = self.algorithm
        if a.overlong_buffer >= s.max_new_tokens:
            raise ValueError("algorithm.overlong_buffer must be smaller than sampling.max_new_tokens")
        if s.n < 2 and a.advantage in ("grpo", "rloo", "reinforce_pp_baseline"):
            raise ValueError(f"sampling.n must be >= 2: algorithm.advantage={a.advantage} needs a group")
        self._check_environment()
        return self

    def _check_environment(self) -> None:
        env, total = self.environment, self.sequence_tokens
        if env.name is None:
            return
        if total <= self.data.max_prompt_tokens:
            raise ValueError(f"environment.max_total_tokens={total} leaves no room for a reply after a prompt of "
                             f"up to data.max_prompt_tokens={self.data.max_prompt_tokens}")
        if self.algorithm.overlong_buffer:
            raise ValueError("algorithm.overlong_buffer with environment.name: DAPO's overlong penalty measures one "
                             "reply against sampling.max_new_tokens; an episode's turns are limited by "
                             "environment.max_total_tokens and max_new_tokens_per_turn instead")
        if self.rollout.max_model_len is not None and total > self.rollout.max_model_len:
            raise ValueError(f"environment.max_total_tokens={total} exceeds rollout.max_model_len="
                             f"{self.rollout.max_model_len}: the generators could not hold a whole episode")

    @property
    def sequence_tokens(self) -> int:
        """Prompt + response tokens of one sample: ``environment.max_total_tokens`` for episodes,
        else (and by default) ``data.max_prompt_tokens + sampling.max_new_tokens``."""
        single = self.data.max_prompt_tokens + self.sampling.max_new_tokens
        return (self.environment.max_total_tokens or single) if self.environment.name else single

    @property
    def turn_tokens(self) -> int:
        """max_tokens of one model turn (``environment.max_new_tokens_per_turn`` or ``sampling.max_new_tokens``)."""
        return self.environment.max_new_tokens_per_turn or self.sampling.max_new_tokens


MOVED_KEYS = [("rollout", "cpu_bind", "placement.generators (one entry per generator)"),
             ("rollout", "omp_threads", "placement.generator_threads"),
             ("learner", "num_threads", "placement.learner_threads")]


C = TypeVar("C", bound=BaseModel)


def load_config(path: str | Path, overrides: list[str] | None = None, schema: type[C] = RunConfig) -> C:  # type: ignore[assignment]
    """Read, override and validate a TOML config against ``schema`` (the RL run by default;
    :mod:`asyncrl.train_config` holds the SFT and reward-model ones). Raises ConfigError
    with key paths."""
    path = Path(path)
    aliases = bool(getattr(schema, "ALIASES", None))
    data = read_toml(path.resolve(), aliases=aliases)
    for ov in overrides or []:
        apply_override(data, ov, aliases)
    return validate_config(data, source=str(path), schema=schema)


def validate_config(data: dict[str, Any], source: str = "config", schema: type[C] = RunConfig) -> C:  # type: ignore[assignment]
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source)) from None


def dump_config(cfg: BaseModel) -> dict[str, Any]:
    """JSON-able dict of a config (paths as strings), e.g. for a metrics backend's run config."""
    return cfg.model_dump(mode="json")
