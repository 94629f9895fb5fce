"""The run configuration's schema: typed dataclasses for the model, data and training sections."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

from hrm.config.parse import build
from hrm.kernels import BACKENDS

Family = Literal["mamba", "hybrid_recursive", "recursive_ssm", "hybrid_pattern"]  # hrm.models.FAMILIES
Dtype = Literal["float32", "bfloat16"]
LogitsDtype = Literal["auto", "float32", "bfloat16"]
ScanBackend = Literal[BACKENDS]  # kernels.selective_scan's backends
# model.remat: what each layer keeps for the backward pass (hrm.models.lm.REMAT_POLICIES maps them to jax's).
Remat = Literal["none", "block", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_named", "save_projections"]


@dataclasses.dataclass
class ModelConfig:
    family: Family = "mamba"
    d_model: int = 256
    n_layers: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0: ceil(d_model / 16), as the reference
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    norm_eps: float = 1e-5
    vocab_size: int = 0  # embedding/head rows; 0: the tokenizer's size rounded up to a multiple of 128
    token_vocab_size: int = 0  # ids the tokenizer makes; logits of the rows past it are -inf (0: every row)
    tie_embeddings: bool = True
    rescale_prenorm_residual: bool = True
    residual_in_fp32: bool = True
    dtype: Dtype = "float32"  # compute dtype; parameters stay float32
    logits_dtype: LogitsDtype = "auto"  # the LM head's matmul inputs ("auto": the compute dtype); it
    # accumulates, and the softmax and loss run, in float32 either way
    scan_backend: ScanBackend = "auto"
    scan_chunk: int = 0  # the chunked scan's steps per chunk, 16..1024; 0: about sqrt(seq_len) within 64..256
    # --- attention (hybrid_recursive's hierarchical attention, hybrid_pattern's "A" layers) ---
    n_heads: int = 4  # attention heads; d_model must be a multiple
    rope_theta: float = 10000.0  # RoPE base
    attention_scales: tuple[int, ...] = (1, 2, 4)  # hybrid_recursive: pooling factors of the multi-scale attention
    # (on the command line and in JSON also "1,2,4")
    max_cache_len: int = 2048  # KV-cache positions for decoding (prompt + generated tokens must fit)
    mlp_ratio: int = 4  # hidden width / d_model of the MLPs (attention layers, recursive transform)
    # --- hybrid_recursive (docs/MODELS.md) ---
    max_recursion_depth: int = 3  # applications of the shared recursive transform
    gate_per_token: bool = False  # depth gate per token; False: per sequence (causal running mean)
    ponder_prior: float = 0.0  # depth prior: truncated geometric(p); 0 = uniform over depths
    gate_reg_weight: float = 0.01  # weight of KL(gate || prior), the anti-collapse term (0 disables)
    # --- hybrid_pattern (docs/MODELS.md) ---
    layer_pattern: str = ""  # one letter per layer: M = Mamba, A = attention + MLP; length n_layers
    # --- recursive_ssm: n_layers physical blocks applied recurrent_depth times ---
    recurrent_depth: int = 1
    adapter_rank: int = 0  # per-depth low-rank adapter rank (per-depth scale/shift always present)
    checkpoint_segments: int = 1  # recursive_ssm: blocks per remat segment (when remat is not "none")
    # --- memory ---
    dropout: float = 0.0  # residual dropout on every branch (Mamba, attention, MLP, recursion, fusion)
    # while training; never in evaluation or decoding; 0 = none
    remat: Remat = "none"  # rematerialise each layer in the backward pass: "none", "block" (keep only
    # its input), a jax.checkpoint_policies name (dots_with_no_batch_dims_saveable) or a named policy:
    # "save_named" keeps the values the layers tag (layer input, in/out projections, attention output, conv
    # output, dt), "save_projections" the same less the conv output and dt (recomputed in the backward)
    scan_layers: bool = True  # run the repeated layers under nnx.scan, parameters stacked on a leading layer
    # axis (compile time flat in depth, remat XLA honours); False: the unrolled Python loop (debugging)


@dataclasses.dataclass
class SyntheticConfig:
    """``--dataset synthetic:NAME``: generated task examples (hrm/data/synthetic.py; sizes 0 = task default)."""

    examples: int = 20000  # training documents generated (data.eval_fraction of them held out)
    length: int = 0  # task size: sequence length, key-value pairs, digits or operations
    targets: int = 0  # tokens to copy (selective_copying), queries (mqar)
    vocab: int = 0  # alphabet size (selective_copying, induction_heads)
    seed: int = 0  # the examples' seed (independent of train.seed)


@dataclasses.dataclass
class DataConfig:
    tokenizer: str = "byte"
    seq_len: int = 256
    data_dir: str = ""  # a folder of .txt/.py/.md/.json files
    data_path: str = ""  # a dialogue JSONL file: {"context": [...], "response": "...", "source": "..."}
    dataset: str = ""  # a local .jsonl/.json/.parquet/.csv file, a save_to_disk folder or a hub name
    dataset_split: str = "train"
    text_column: str = "text"  # comma-separated columns, joined with a blank line
    completion_only: bool = False  # loss only on the last column / the dialogue response
    eval_fraction: float = 0.01  # documents held out for evaluation (deterministic)
    cache_dir: str = ""  # tokenized-data cache (default ~/.cache/hrm/tokens)
    num_threads: int = 2
    prefetch: int = 8
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)


@dataclasses.dataclass
class TrainConfig:
    steps: int = 1000
    epochs: float = 0.0  # > 0: train.steps follows from this many passes over the training tokens
    batch_size: int = 8  # global batch per optimizer step (all devices, all micro-batches)
    accumulation_steps: int = 1  # micro-batches per step, run in sequence: batch_size / this rows at a time
    shard_params: bool = False  # FSDP: shard parameters and optimizer state over the devices
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0  # the largest global gradient norm; 0 = no clipping
    save_every: int = 500
    log_every: int = 10
    log_activations: bool = True  # log steps also record activation RMS per layer and recursion depth
    eval_every: int = 0  # 0: evaluate at every checkpoint save and at the end
    eval_batches: int = 8
    keep_checkpoints: int = 3  # the newest N steps; the best (lowest eval loss) and final ones are kept too
    profile_steps: int = 0  # > 0: a jax.profiler trace of this many steps in RUN_DIR/profile
    max_bad_steps: int = 10  # non-finite steps in a row (each update skipped) that stop the run
    seed: int = 42


@dataclasses.dataclass
class Config:
    name: str = "run"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Config:
        return build(cls, raw, prefix="")

    def save_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: Path) -> Config:
        return cls.from_dict(json.loads(Path(path).read_text()))


GPT2_TOKENS = 50257  # GPT-2 BPE's ids (hrm.tokenizer's "gpt2")
VOCAB_MULTIPLE = 128  # embedding/head rows are padded to a multiple of this (tensor-core tiles)
GPT2_VOCAB = -(-GPT2_TOKENS // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
DEFAULT_SAFETY_MARGIN_MB = 2048  # --vram_safety_margin: device memory (MB) kept free when sizing the batch
