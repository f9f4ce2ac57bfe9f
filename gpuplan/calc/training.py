"""Training and fine-tuning memory: one optimizer step of a Hugging Face causal LM, per GPU.

A step is what transformers' Trainer does per update: ``grad_accumulation`` micro-batches of forward (with
labels) and backward, then ``optimizer.step()`` and ``zero_grad(set_to_none=True)``. Its peak
(``torch.cuda.max_memory_allocated``) is the largest of three moments:

* **forward**: weights + optimizer states (+ gradients kept from earlier micro-batches) + the activations
  autograd saved in every layer + the logits and the loss being formed;
* **backward**: the same, at the start of the backward pass, when the gradient of the logits is formed;
  or near its end, when every gradient exists;
* **optimizer step**: weights + gradients + optimizer states + the step's temporaries.

Every term names the library line it comes from; the constants were checked against memory measured on
an H200 (tests/fixtures/measurements/training-h200.jsonl, docs/training.md). Sizes: ``T = batch x seq``
token rows per micro-batch, ``h`` hidden size, ``I`` FFN width, ``q`` = heads x head_dim,
``kv`` = kv_heads x head_dim, ``V`` vocabulary.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from gpuplan.calc.overhead import CUBLAS_WORKSPACE_BYTES
from gpuplan.calc.precision import Precision
from gpuplan.calc.weights import is_quantized, weights_bytes
from gpuplan.errors import InputError
from gpuplan.models.spec import ModelSpec, QuantSpec, TensorGroup, TensorRole

Method = Literal["full", "lora", "qlora"]
TrainPrecision = Literal["bf16", "fp16", "fp32", "mixed"]
OptimizerName = Literal["adamw", "adamw-8bit", "adafactor", "sgd", "sgd-momentum"]

METHODS: tuple[str, ...] = ("full", "lora", "qlora")
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32", "mixed")
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw-8bit", "adafactor", "sgd", "sgd-momentum")
ZERO_STAGES: tuple[int, ...] = (0, 1, 2, 3)

FP32 = 4
BOOL = 1
TRAINING_WORKSPACES = 2
_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# bitsandbytes/optim/optimizer.py Optimizer2State.init_state: tensors of fewer than min_8bit_size (4096)
# elements keep fp32 states; larger ones get uint8 states with one fp32 absmax per 256-element block.
BNB_MIN_8BIT_SIZE = 4096
BNB_OPTIMIZER_BLOCK = 256
# The two 256-entry fp32 quantization maps (dynamic, udynamic) the 8-bit optimizer moves to the GPU once.
BNB_QMAP_BYTES = 2 * 256 * FP32

# DeepSpeed ZeRO defaults (deepspeed/runtime/zero/config.py): reduce_bucket_size = 5e8 elements;
# stage3_max_live_parameters = stage3_max_reuse_distance = 1e9 elements (parameters kept gathered because they
# are used again soon, as a checkpointed layer is in its recompute).
DS_REDUCE_BUCKET_ELEMENTS = 500_000_000
DS_MAX_LIVE_PARAMETERS = 1_000_000_000
# ZeRO-3 steps its fp32 partition in sub-groups of sub_group_size = 1e9 elements (config.py); a sub-group closes
# at the first parameter that takes it to that size or more (stage3.py _create_fp16_sub_groups).
DS_SUB_GROUP_ELEMENTS = 1_000_000_000

# Families whose configs train with dropout by default: GPT2Config (resid_pdrop = embd_pdrop = 0.1) and
# OPTConfig (dropout = 0.1). A dropout in training mode keeps its boolean mask for the backward pass
# (aten native_dropout). Other families ship attention_dropout = 0.0 and no hidden dropout.
_DROPOUT_SITES_PER_LAYER = {"gpt2": 2, "opt": 2}
_DROPOUT_SITES_OUTSIDE = {"gpt2": 1, "opt": 0}
# GPT-2's NewGELUActivation (transformers/activations.py) is written in Python: the tanh chain keeps
# x, tanh(...), 0.5*x and 1+tanh(...) for the backward pass.
_COMPOSITE_GELU = {"gelu_new", "gelu_fast"}


class TrainingSetup(BaseModel):
    """What is trained and how. ``batch`` is the micro-batch per GPU."""

    model_config = ConfigDict(frozen=True)

    method: Method = "full"
    precision: TrainPrecision = "bf16"
    optimizer: OptimizerName = "adamw"
    lora_rank: int = 16
    lora_targets: tuple[str, ...] | None = None
    """Module names to adapt (q_proj, v_proj ...); None: every linear projection of the blocks (peft's
    ``target_modules="all-linear"``)."""
    grad_checkpointing: bool = False
    """Recompute each layer in the backward pass. Not given (or None), it follows the script: on with
    ``prepare_kbit``, as peft's prepare_model_for_kbit_training(use_gradient_checkpointing=True) turns it on
    (peft/utils/other.py), off otherwise."""
    batch: int = 1
    seq: int = 2048
    grad_accumulation: int = 1
    zero: int = 0
    fsdp: bool = False
    gpus: int = 1
    offload_optimizer: bool = False
    prepare_kbit: bool = False
    """QLoRA base passed through peft's prepare_model_for_kbit_training (the QLoRA scripts', TRL's recipe)."""

    @model_validator(mode="before")
    @classmethod
    def _checkpointing_follows_prepare_kbit(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("grad_checkpointing") is None:
            data = {**data, "grad_checkpointing": bool(data.get("prepare_kbit", False))}
        return data

    @property
    def param_bytes(self) -> int:
        """Storage of the trained weights: mixed precision keeps fp32 master weights."""
        return FP32 if self.precision in ("mixed", "fp32") else 2

    @property
    def compute_dtype(self) -> str:
        return "bf16" if self.precision == "mixed" else self.precision


def validate_setup(setup: TrainingSetup) -> None:
    """Raise InputError for combinations that cannot run."""
    if setup.lora_rank <= 0:
        raise InputError(f"--lora-rank must be positive, got {setup.lora_rank}")
    if setup.batch < 1 or setup.seq < 1 or setup.grad_accumulation < 1:
        raise InputError("--batch, --seq and --grad-accumulation must be at least 1")
    if setup.gpus < 1:
        raise InputError(f"--gpus must be at least 1, got {setup.gpus}")
    if setup.zero not in ZERO_STAGES:
        raise InputError(f"--zero must be 0, 1, 2 or 3, got {setup.zero}")
    if setup.zero and setup.fsdp:
        raise InputError("choose DeepSpeed ZeRO (--zero) or FSDP (--fsdp), not both")
    if (setup.zero or setup.fsdp) and setup.gpus == 1:
        what = f"ZeRO stage {setup.zero}" if setup.zero else "FSDP"
        raise InputError(f"{what} shards across GPUs and needs --gpus 2 or more",
                         hint="with one GPU leave --zero at 0 (or drop --fsdp)")
    if setup.offload_optimizer and not (setup.zero or setup.fsdp):
        raise InputError("--offload-optimizer is a DeepSpeed ZeRO / FSDP option",
                         hint="add --zero 1, 2 or 3 with --gpus 2 or more")
    if setup.prepare_kbit and setup.method != "qlora":
        raise InputError("--prepare-kbit prepares a 4-bit base: it goes with --method qlora",
                         hint="drop --prepare-kbit, or use --method qlora")
    if setup.method == "qlora" and setup.precision == "fp32":
        raise InputError("QLoRA computes in 16-bit (bitsandbytes bnb_4bit_compute_dtype)",
                         hint="use --precision bf16, fp16 or mixed")


class TrainingMemory(BaseModel):
    """Byte components of one training step, per GPU."""

    model_config = ConfigDict(frozen=True)

    weights_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    """What the activation side adds at the peak: saved activations, logits and loss, temporaries."""
    step_temporary_bytes: int
    forward_peak_bytes: int
    backward_peak_bytes: int
    step_peak_bytes: int
    peak_allocated_bytes: int
    peak_phase: str
    trainable_parameters: int
    total_parameters: int
    largest_transient_bytes: int
    components: dict[str, int]
    notes: list[str]


# ---- parameters ------------------------------------------------------------------------------------

def _module_name(tensor: TensorGroup) -> str:
    parts = tensor.name.split(".")
    return parts[-2] if len(parts) >= 2 else parts[-1]


def module_in(tensor: TensorGroup, names: set[str]) -> bool:
    """Whether the tensor's module is one of ``names``: by its own name, or by its parent and own name where
    the name alone is ambiguous (GPT-2's ``attn.c_proj`` and ``mlp.c_proj``)."""
    parts = tensor.name.split(".")
    return _module_name(tensor) in names or ".".join(parts[-3:-1]) in names


_LORA_ROLES = (TensorRole.LINEAR, TensorRole.ROUTER, TensorRole.EXPERT_LINEAR, TensorRole.LM_HEAD)


def lora_target_tensors(spec: ModelSpec, targets: tuple[str, ...] | None) -> list[TensorGroup]:
    """The weights LoRA adapts.

    ``None`` is peft's "all-linear" (peft/tuners/tuners_utils.py, _maybe_include_all_linear_layers): every
    nn.Linear / Conv1D of the model except the output layer. Expert weights, which transformers 5 stores as
    fused 3-D parameters rather than nn.Linear modules, are not among them.
    """
    chosen = []
    for t in spec.tensors:
        if not t.loaded or len(t.shape) != 2 or not t.name.endswith("weight"):
            continue
        if targets is None:
            if t.role in (TensorRole.LINEAR, TensorRole.ROUTER):
                chosen.append(t)
        elif t.role in _LORA_ROLES:
            if _module_name(t) in targets:
                chosen.append(t)
    return chosen


def linear_module_names(spec: ModelSpec) -> list[str]:
    """Names LoRA can target in this model: its linear modules (projections, router, experts, lm_head)."""
    return sorted({_module_name(t) for t in spec.tensors if t.loaded and len(t.shape) == 2
                   and t.name.endswith("weight") and t.role in _LORA_ROLES})


def lora_parameters(spec: ModelSpec, rank: int, targets: tuple[str, ...] | None = None) -> int:
    """Adapter parameters: lora_A [r, in] + lora_B [out, r] per adapted weight (peft/tuners/lora/layer.py
    LoraLayer.update_layer). A target the model lacks is an error: peft would adapt the others silently and
    the adapter would not be the one planned."""
    if targets is not None:
        names = linear_module_names(spec)
        unknown = [t for t in targets if t not in names]
        if unknown:
            what = "is not a linear module" if len(unknown) == 1 else "are not linear modules"
            raise InputError(f"--lora-targets {', '.join(unknown)} {what} of this model",
                             hint=f"its linear modules are: {', '.join(names)}")
    tensors = lora_target_tensors(spec, targets)
    if not tensors:
        names = sorted({_module_name(t) for t in spec.tensors if t.role is TensorRole.LINEAR})
        raise InputError(f"--lora-targets {','.join(targets or ())} matches no linear layer of this model",
                         hint=f"its projections are: {', '.join(names)}")
    return sum(rank * (t.shape[0] + t.shape[1]) * t.count for t in tensors)


def trainable_parameters(spec: ModelSpec, setup: TrainingSetup) -> int:
    if setup.method == "full":
        return spec.loaded_parameters
    return lora_parameters(spec, setup.lora_rank, setup.lora_targets)


def nf4_precision(compute_dtype: str) -> Precision:
    """QLoRA's base: bitsandbytes NF4 with double quantization (the QLoRA paper's recipe,
    arXiv:2305.14314), block size 64, computing in the 16-bit dtype."""
    quant = QuantSpec(method="bnb_4bit", bits=4, group_size=64, bnb_double_quant=True, source="requested")
    return Precision(weights="nf4", compute_dtype=compute_dtype, kv_dtype=compute_dtype,  # type: ignore[arg-type]
                     quant=quant)


def base_weights_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """The model's own weights on the GPU (without LoRA adapters)."""
    if setup.method == "qlora":
        nf4 = nf4_precision("fp16" if setup.precision == "fp16" else "bf16")
        total = weights_bytes(spec, nf4)
        if setup.prepare_kbit:
            # peft/utils/other.py prepare_model_for_kbit_training: "cast all non INT8 parameters to fp32":
            # every 16-bit weight that is not NF4 (embeddings, norms, biases, lm_head) doubles.
            total += sum(t.numel * t.count * (FP32 - 2) for t in spec.tensors
                         if t.loaded and not is_quantized(t, nf4.quant))
        return total
    dtype = "fp32" if setup.precision in ("mixed", "fp32") else setup.precision
    plain = Precision(weights=dtype, compute_dtype=dtype, kv_dtype=dtype)  # type: ignore[arg-type]
    return weights_bytes(spec, plain)


def largest_tensor(spec: ModelSpec, setup: TrainingSetup) -> int:
    """Elements of the largest trainable tensor (the per-tensor optimizers' working set)."""
    if setup.method == "full":
        return max(t.numel for t in spec.tensors if t.loaded)
    return max(max(t.shape) * setup.lora_rank for t in lora_target_tensors(spec, setup.lora_targets))


def _trainable_tensor_sizes(spec: ModelSpec, setup: TrainingSetup) -> list[tuple[int, int]]:
    """(elements, count) of each trainable tensor."""
    if setup.method == "full":
        return [(t.numel, t.count) for t in spec.tensors if t.loaded]
    out = []
    for t in lora_target_tensors(spec, setup.lora_targets):
        out += [(setup.lora_rank * t.shape[1], t.count), (t.shape[0] * setup.lora_rank, t.count)]
    return out


# ---- optimizer -------------------------------------------------------------------------------------

def optimizer_state_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """Optimizer states of the trainable parameters, unsharded."""
    p_bytes = _trainable_bytes_per_param(setup)
    n = trainable_parameters(spec, setup)
    opt = setup.optimizer
    if opt == "adamw":
        # torch/optim/adamw.py (adam.py _init_group): exp_avg and exp_avg_sq, zeros_like(param); the step
        # counter is a CPU scalar unless capturable/fused.
        return 2 * n * p_bytes
    if opt == "sgd-momentum":
        # torch/optim/sgd.py: one momentum_buffer per parameter, a clone of its first gradient.
        return n * p_bytes
    if opt == "sgd":
        return 0
    if opt == "adamw-8bit":
        total = BNB_QMAP_BYTES
        for numel, count in _trainable_tensor_sizes(spec, setup):
            if numel < BNB_MIN_8BIT_SIZE:
                total += 2 * numel * FP32 * count
            else:
                blocks = -(-numel // BNB_OPTIMIZER_BLOCK)
                total += (2 * numel + 2 * blocks * FP32) * count
        return total
    if opt == "adafactor":
        # transformers/optimization.py Adafactor.step: factored second moments for >= 2-D tensors
        # (exp_avg_sq_row [rows], exp_avg_sq_col [cols]), a full exp_avg_sq for 1-D ones, no first moment
        # (beta1=None); all in float32 (the gradient is upcast first). state["RMS"] = self._rms(p) is a 0-d
        # float32 tensor per parameter tensor.
        total = sum(count for _, count in _trainable_tensor_sizes(spec, setup)) * FP32
        if setup.method == "full":
            for t in spec.tensors:
                if not t.loaded:
                    continue
                if len(t.shape) >= 2:
                    lead = math.prod(t.shape[:-2])
                    total += (t.shape[-2] + t.shape[-1]) * lead * FP32 * t.count
                else:
                    total += t.numel * FP32 * t.count
        else:
            for t in lora_target_tensors(spec, setup.lora_targets):
                total += (setup.lora_rank + t.shape[1] + t.shape[0] + setup.lora_rank) * FP32 * t.count
        return total
    raise AssertionError(opt)  # pragma: no cover - validated upstream


def embedding_backward_bytes(embedding_numel: int, grad_bytes: int, tied: bool, autocast: bool) -> int:
    """Bytes the embedding's backward holds beside the gradients at the end of the backward pass.

    embedding_dense_backward writes the [V, h] gradient in the gradient's own dtype, with few tokens
    (aten/src/ATen/native/cuda/Embedding.cu: ``zeros({num_weights, dim}, grad.options())``) and with many
    (EmbeddingBackwardKernel.cu: float32 partial sums per segment of sorted indices, [segments, h]). An untied
    embedding's .grad is that tensor (AccumulateGrad takes it over). A tied one's gradient also comes from the
    lm_head, and autograd adds the two: out of place in bf16 and fp32 training, so the sum is a third [V, h]
    until both operands are freed, in place under autocast, where the lm_head's gradient is the fresh output of
    the cast back to float32 (recorded traces, tests/fixtures/measurements/traces/training/: Llama-3.2-1B and
    Qwen2.5-0.5B in bf16, GPT-2 in float32 and under autocast)."""
    if not tied:
        return 0
    return embedding_numel * grad_bytes * (2 if tied_gradients_summed_out_of_place(autocast) else 1)


def tied_gradients_summed_out_of_place(autocast: bool) -> bool:
    """Whether autograd adds a tied weight's two gradients into a new tensor (bf16 / fp32 training) rather than
    in place (autocast): embedding_backward_bytes."""
    return not autocast


def _trainable_bytes_per_param(setup: TrainingSetup) -> int:
    if setup.method != "full":
        # peft get_peft_model(autocast_adapter_dtype=True) keeps adapters in float32 (peft_model.py).
        return FP32
    return setup.param_bytes


def step_temporary_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """Memory optimizer.step() allocates and frees again."""
    n = trainable_parameters(spec, setup)
    p_bytes = _trainable_bytes_per_param(setup)
    if setup.optimizer == "adamw":
        # adam.py _multi_tensor_adam (foreach, the default on CUDA): exp_avg_sq_sqrt =
        # torch._foreach_sqrt(device_exp_avg_sqs) is one new tensor per parameter, for all at once.
        return n * p_bytes
    if setup.optimizer == "adafactor":
        # One tensor at a time: for 16-bit weights the fp32 copies of the parameter and its gradient, then
        # grad**2 and grad**2 + eps, then the factored estimate replacing it: four float32 tensors of the
        # largest parameter (two for float32 weights, which need no copies).
        largest = largest_tensor(spec, setup)
        return largest * FP32 * (4 if p_bytes == 2 else 2)
    # SGD (foreach _foreach_add_ in place), bitsandbytes 8-bit kernels update in place.
    return 0


# ---- activations -----------------------------------------------------------------------------------

class _Dims:
    def __init__(self, spec: ModelSpec, setup: TrainingSetup) -> None:
        self.spec = spec
        self.setup = setup
        self.h = spec.hidden_size
        self.I = spec.intermediate_size
        self.q = spec.num_attention_heads * spec.head_dim
        self.kv = spec.num_key_value_heads * spec.head_dim
        self.kv_v = spec.num_key_value_heads * spec.v_head_dim
        self.heads = spec.num_attention_heads
        self.V = spec.vocab_size
        self.L = spec.num_hidden_layers
        self.T = setup.batch * setup.seq
        self.autocast = setup.precision == "mixed"
        # Activations of the blocks: the compute dtype (bf16 under autocast).
        self.e = _BYTES[setup.compute_dtype]
        # The residual stream: fp32 under autocast (the embedding is not autocast, and bf16 + fp32 -> fp32).
        self.r = FP32 if self.autocast else self.e
        self.lora = setup.method != "full"
        self.targets = {_module_name(t) for t in lora_target_tensors(spec, setup.lora_targets)} if self.lora else set()


# Projections that read the normed hidden state: the attention's input projections and the FFN's.
_ATTN_INPUT_PROJ = {"q_proj", "k_proj", "v_proj", "c_attn", "qkv_proj", "query_key_value", "W_pack", "Wqkv",
                    "q_a_proj", "kv_a_proj_with_mqa"}
_FFN_INPUT_PROJ = {"gate_proj", "up_proj", "c_fc", "fc1", "gate_up_proj", "dense_h_to_4h", "w1", "w3"}
# Projections whose input is the FFN's inner activation (act(gate) * up, or act(fc1)).
_FFN_OUTPUT_PROJ = {"down_proj", "fc2", "dense_4h_to_h", "w2", "mlp.c_proj"}
# Gemma's RMSNorm (modeling_gemma2.py Gemma2RMSNorm) multiplies the float32 normalized value by
# (1 + weight) in float32, so it keeps that value in float32; Llama's casts it back first.
_GEMMA_NORM = {"gemma", "gemma2", "gemma3_text"}
# Gemma-2 caps its final logits (config final_logit_softcapping = 30.0; modeling_gemma2.py
# Gemma2ForCausalLM.forward: logits / cap, tanh, * cap): tanh's output is kept for the backward pass.
_LOGIT_SOFTCAP = {"gemma2"}


def _layer_consumers(spec: ModelSpec) -> tuple[int, int]:
    """How many linears read the attention's normed input and the FFN's (autocast casts for each)."""
    per_layer = {_module_name(t) for t in spec.tensors if t.count == spec.num_hidden_layers and len(t.shape) == 2}
    attn = len(per_layer & _ATTN_INPUT_PROJ) or 3
    ffn = len(per_layer & _FFN_INPUT_PROJ) or (2 if spec.ffn_gated else 1)
    return attn, ffn


def _saved_per_token_layer(d: _Dims) -> dict[str, int]:
    """Bytes per token that one decoder layer's forward leaves saved for its backward pass.

    autograd saves an input of a multiplication only when the other factor needs a gradient (the generated
    MulBackward0 / MmBackward0 save ``self`` under ``should_compute_output``), so frozen weights (LoRA) keep
    less: neither the normed value that multiplies a norm's weight nor the input of a frozen projection.
    """
    spec, e, r = d.spec, d.e, d.r
    train_w = not d.lora
    out: dict[str, int] = {}
    attn_consumers, ffn_consumers = _layer_consumers(spec)
    gemma = spec.model_type in _GEMMA_NORM
    # Norms before the attention and the FFN (Gemma-2 adds two after them, whose output only joins the
    # residual). RMSNorm (modeling_llama.py LlamaRMSNorm): x.to(float32) is kept for pow and mul (4h), and
    # the normalized value, cast back to the compute dtype (float32 for Gemma), is kept by weight * y when
    # the weight trains. LayerNorm (aten native_layer_norm) keeps its input. Under autocast the norm runs in
    # float32 and every linear that reads it casts its own bf16 copy (autocast caches weights only).
    norms = 4 if spec.model_type in ("gemma2", "gemma3_text") else 2
    norm_total = 0
    for index in range(norms):
        if spec.norm_kind == "rms":
            y = FP32 if (gemma or d.autocast) else e
            kept = FP32 * d.h + (y * d.h if train_w else 0)
        else:
            kept = r * d.h
        if d.autocast:
            kept += 2 * d.h * ((attn_consumers, 0, ffn_consumers, 0)[index] if norms == 4
                               else (attn_consumers, ffn_consumers)[index])
        norm_total += kept
    out["norms"] = norm_total
    # The normed input of the attention and of the FFN, kept by F.linear for the weight gradient (once,
    # shared by q/k/v and by gate/up); under autocast these are the casts counted above.
    out["linear_inputs"] = 2 * d.h * e if (train_w and not d.autocast) else 0
    # Attention (sdpa, flash / memory-efficient kernel): q, k, v after RoPE, the output (also o_proj's
    # input), and the float32 logsumexp per head. RoPE's products keep nothing: cos and sin need no grad.
    out["attention"] = (2 * d.q + d.kv + d.kv_v) * e + d.heads * FP32
    math_layers = _math_sdpa_layers(d)
    if math_layers:
        # float32 q with grouped K/V and no mask: transformers passes enable_gqa=True, which neither flash
        # (16-bit only) nor the memory-efficient kernel takes, so torch runs the math SDPA
        # (aten/src/ATen/native/transformers/attention.cpp _scaled_dot_product_attention_math). Its matmuls
        # keep the scaled q, K and V repeated per head, and the softmax's float32 probabilities
        # [heads, seq, seq] (one per token: heads x seq); the output is kept as before.
        math = (d.q + d.heads * spec.head_dim + d.heads * spec.v_head_dim + d.heads * spec.v_head_dim) * FP32 \
            + d.heads * d.setup.seq * FP32
        out["attention"] += (math - out["attention"]) * math_layers // d.L
    if spec.model_type in ("qwen3", "qwen3_moe", "gemma3_text", "olmo2"):
        # q_norm / k_norm: RMSNorm per head on q and k.
        out["qk_norm"] = (FP32 + (e if train_w else 0)) * (d.q + d.kv)
    # FFN. Gated: act(gate) keeps gate's output, the product keeps act(gate) and up, and down_proj keeps the
    # product when its weight trains. NewGELU (activations.py) keeps x, tanh(.), 0.5*x and 1+tanh(.); under
    # autocast pow runs in float32 (autocast's fp32 list) and the chain stays float32 after it. ReLU keeps
    # its output, which is also fc2's input.
    down_input = d.I * e if train_w else 0
    if spec.ffn_gated:
        out["mlp"] = 3 * d.I * e + down_input
    elif spec.hidden_act in _COMPOSITE_GELU:
        out["mlp"] = (4 + 4 + 2 + 4) * d.I + (2 * d.I if train_w else 0) if d.autocast else 4 * d.I * e + down_input
    elif spec.hidden_act == "relu":
        out["mlp"] = d.I * e
    else:
        out["mlp"] = d.I * e + down_input
    sites = _DROPOUT_SITES_PER_LAYER.get(spec.model_type, 0)
    if sites:
        out["dropout_masks"] = sites * d.h * BOOL
    if d.lora:
        out["lora_inputs"] = sum(size for _, size in lora_saved_parts(d))
    return out


def lora_saved_parts(d: _Dims) -> list[tuple[TensorGroup, int]]:
    """The tensors LoRA's adapters keep for the backward pass, per token and layer, each with its adapted
    weight: peft/tuners/lora/layer.py Linear.forward, ``x = self._cast_input_dtype(x, lora_A.weight.dtype)``,
    gives each adapted linear its own float32 copy of its input (kept by lora_A), and lora_A's output [T, r]
    is kept by lora_B."""
    parts: list[tuple[TensorGroup, int]] = []
    groups: set[str] = set()
    for t in lora_target_tensors(d.spec, d.setup.lora_targets):
        if t.count != d.L:
            continue
        name = _module_name(t)
        if d.autocast:
            # Under autocast lora_A's linear runs in bf16: it keeps a bf16 cast of its input (for the
            # linears that read a norm, the casts counted with the norms; for the others a copy of the
            # input) and lora_B keeps lora_A's bf16 output. The frozen base linear keeps nothing of its
            # input. (Measured: 30 bytes x hidden per token and layer less than the float32 copies.)
            reads_norm = name in _ATTN_INPUT_PROJ or name in _FFN_INPUT_PROJ
            parts.append((t, d.setup.lora_rank * 2 + (0 if reads_norm else t.shape[1] * 2)))
            continue
        if d.e != FP32:
            parts.append((t, t.shape[1] * FP32))
        else:
            # A float32 input needs no cast: linears reading the same tensor keep it once, and the
            # attention's output (o_proj's input) is kept by the attention already, as is ReLU's output (fc2's
            # input: threshold_backward reads the result, so ReLU keeps it; _saved_per_token_layer counts it).
            group = "attn" if name in _ATTN_INPUT_PROJ else "ffn" if name in _FFN_INPUT_PROJ else \
                "ffn_out" if module_in(t, _FFN_OUTPUT_PROJ) else None
            if group == "ffn_out" and not d.spec.ffn_gated and d.spec.hidden_act == "relu":
                group = None
            if group is not None and group not in groups:
                groups.add(group)
                parts.append((t, t.shape[1] * FP32))
        parts.append((t, d.setup.lora_rank * FP32))
    return parts


def _math_sdpa_layers(d: _Dims) -> int:
    """Layers whose sdpa attention runs torch's math kernel in training: float32 compute, grouped K/V, and
    no mask (a sliding window shorter than the sequence makes transformers pass a mask and K/V repeated per
    head, which the memory-efficient kernel takes)."""
    spec = d.spec
    if d.e != FP32 or spec.num_key_value_heads == spec.num_attention_heads:
        return 0
    return sum(1 for w in spec.layer_windows if w is None or w >= d.setup.seq)


def _loss_terms(d: _Dims) -> dict[str, int]:
    """Logits and loss over the whole sequence (transformers/loss/loss_utils.py ForCausalLMLoss:
    logits.float(), then cross_entropy = log_softmax + nll_loss)."""
    logits = d.T * d.V
    e = d.e
    softcap = e * logits if d.spec.model_type in _LOGIT_SOFTCAP else 0
    # At the loss: the logits in the compute dtype (kept by the model's forward; with a soft cap, tanh's
    # output too), their float32 copy (.float(); none when already float32), log_softmax's output.
    forward = logits * ((e if e != FP32 else 0) + FP32 + FP32) + softcap
    # After the forward only log_softmax's output stays (the outputs object, and its logits, is dropped).
    kept = logits * FP32 + softcap
    # Backward: nll_loss's gradient and log_softmax's gradient beside the kept log-probabilities.
    backward = logits * 3 * FP32 + softcap
    return {"loss_forward": forward, "loss_kept": kept, "loss_backward": backward}


def _linear_weight_elements(spec: ModelSpec) -> tuple[int, int]:
    """(all projections including the lm_head, the lm_head alone): what autocast casts to bf16."""
    blocks = sum(t.total_numel for t in spec.tensors if t.loaded and len(t.shape) >= 2 and t.role in (
        TensorRole.LINEAR, TensorRole.ROUTER, TensorRole.EXPERT_LINEAR))
    head = sum(t.total_numel for t in spec.tensors if t.role is TensorRole.LM_HEAD)
    if spec.tie_word_embeddings or not head:
        head = sum(t.total_numel for t in spec.tensors if t.role is TensorRole.EMBEDDING)
    return blocks + head, head


def _final_norm_bytes(d: _Dims) -> int:
    """The final norm and the lm_head's input, per token."""
    train_w = not d.lora
    if d.spec.norm_kind == "rms":
        y = FP32 if (d.spec.model_type in _GEMMA_NORM or d.autocast) else d.e
        kept = FP32 * d.h + (y * d.h if train_w else 0)
    else:
        kept = d.r * d.h
    # lm_head keeps its input (a bf16 cast under autocast) when its weight trains.
    return kept + ((2 if d.autocast else d.e) * d.h if train_w else 0)


def estimate_training(spec: ModelSpec, setup: TrainingSetup) -> TrainingMemory:
    validate_setup(setup)
    notes: list[str] = []
    distributed = setup.zero > 0 or setup.fsdp
    if distributed and setup.precision == "mixed":
        # DeepSpeed's bf16 mode and FSDP's MixedPrecisionPolicy keep the model in bf16 for compute (with
        # fp32 master weights in the optimizer / the shards): no autocast, activations as in bf16.
        activations_setup = setup.model_copy(update={"precision": "bf16"})
    elif setup.prepare_kbit:
        # With the embedding in float32 the residual stream is float32, and bitsandbytes' Linear4bit returns
        # its output in its input's dtype (bitsandbytes/nn/modules.py Linear4bit.forward: .to(inp_dtype)):
        # every activation is float32, as in float32 training; only the NF4 matmuls compute in 16-bit.
        activations_setup = setup.model_copy(update={"precision": "fp32"})
        notes.append("prepare_model_for_kbit_training: embeddings, norms and lm_head in float32, so the "
                     "activations are float32")
        notes.append("gradient checkpointing " + ("on, as prepare_model_for_kbit_training turns it on by "
                     "default (use_gradient_checkpointing=True)" if setup.grad_checkpointing else "off: the "
                     "script passes use_gradient_checkpointing=False"))
    else:
        activations_setup = setup
    if setup.method == "qlora" and not setup.prepare_kbit:
        notes.append("QLoRA base used as loaded (peft get_peft_model); add --prepare-kbit when the script calls "
                     "peft's prepare_model_for_kbit_training (QLoRA scripts, TRL), which casts embeddings, "
                     "norms and lm_head to float32 and makes every activation float32")
    d = _Dims(spec, activations_setup)
    if _math_sdpa_layers(d):
        notes.append("float32 activations with grouped-query attention run torch's math SDPA, which keeps "
                     "[batch, heads, seq, seq] float32 probabilities per layer for the backward pass")
    trainable = trainable_parameters(spec, setup)
    base = base_weights_bytes(spec, setup)
    adapters = trainable * FP32 if setup.method != "full" else 0
    grads = trainable * _trainable_bytes_per_param(setup)
    states = optimizer_state_bytes(spec, setup)
    temp = step_temporary_bytes(spec, setup)
    T = d.T

    per_layer = _saved_per_token_layer(d)
    layer_bytes = sum(per_layer.values()) * T
    loss = _loss_terms(d)
    # cuBLAS keeps a workspace per handle, and handles are per thread (aten/src/ATen/cuda/CublasHandlePool.cpp);
    # the backward pass runs on autograd's own device thread (torch/csrc/autograd/engine.cpp), so a training
    # process holds two (measured: 64 MiB at the start of the second step, beside weights and states).
    workspace = TRAINING_WORKSPACES * CUBLAS_WORKSPACE_BYTES
    cast_all = cast_head = 0
    if d.autocast:
        # torch.autocast casts each fp32 weight to bf16 for its matmul and caches the copy (leaf tensors
        # that require grad) until the autocast region exits; F.linear keeps it for its backward. Under
        # checkpointing the layers' copies die with the forward and only the lm_head's is kept.
        linear, head = _linear_weight_elements(spec)
        cast_all, cast_head = 2 * linear, 2 * head
    final = _final_norm_bytes(d) * T
    outside_dropout = _DROPOUT_SITES_OUTSIDE.get(spec.model_type, 0) * d.h * T
    if setup.grad_checkpointing:
        # transformers' gradient_checkpointing_enable: torch.utils.checkpoint (use_reentrant=False) per
        # decoder layer keeps only each layer's input; the backward recomputes one layer at a time.
        saved = d.L * d.r * d.h * T + final + outside_dropout
        recompute = layer_bytes
        cast_kept = cast_head
    else:
        saved = d.L * layer_bytes + final + outside_dropout
        recompute = 0
        cast_kept = cast_all
    # The autocast cache keeps a cast only of a leaf that requires grad (aten/src/ATen/autocast_mode.cpp
    # cached_cast); a frozen base weight (LoRA) is cast at each use and lives on only where autograd saves it,
    # so under checkpointing the forward holds no more of them than the backward does.
    cast_forward = cast_kept if d.lora else cast_all
    embedding_grad = 0
    if setup.method == "full":
        emb = max((t for t in spec.tensors if t.role is TensorRole.EMBEDDING), key=lambda t: t.numel, default=None)
        embedding_grad = embedding_backward_bytes(emb.numel, _trainable_bytes_per_param(setup),
                                                  spec.tie_word_embeddings, d.autocast) if emb is not None else 0

    per_gpu = _per_gpu_states(spec, setup, base=base, trainable=trainable, grads=grads, states=states, temp=temp)
    notes += per_gpu.notes
    w, g, s, t = per_gpu.weights, per_gpu.grads, per_gpu.states, per_gpu.temp
    acc_grads = g if setup.grad_accumulation > 1 or per_gpu.grads_persistent else 0
    fwd_extra, bwd_extra = per_gpu.forward_extra, per_gpu.backward_extra
    forward_peak = w + s + acc_grads + saved + cast_forward + loss["loss_forward"] + fwd_extra + workspace
    backward_start = w + s + acc_grads + saved + cast_kept + loss["loss_backward"] + bwd_extra + workspace
    backward_recompute = w + s + acc_grads + saved + recompute + bwd_extra + workspace
    backward_end = w + s + g + embedding_grad + bwd_extra + workspace
    backward_peak = max(backward_start, backward_recompute, backward_end)
    g_step = g if per_gpu.grads_at_step is None else per_gpu.grads_at_step
    step_peak = w + g_step + s + t + per_gpu.step_extra + workspace
    phases = {"forward": forward_peak, "backward": backward_peak, "optimizer step": step_peak}
    phase = max(phases, key=phases.__getitem__)
    peak = phases[phase]
    activation = peak - w - s - (g if phase == "optimizer step" or acc_grads else 0)
    if phase == "optimizer step":
        activation -= t
    components = {
        "base_weights": base, "lora_adapters": adapters, "gradients": grads, "optimizer_states": states,
        "optimizer_step_temporaries": temp, "saved_activations": saved, "autocast_weight_copies": cast_all,
        "recomputed_layer": recompute, "embedding_backward": embedding_grad,
        "logits_and_loss_forward": loss["loss_forward"], "logits_and_loss_backward": loss["loss_backward"],
        "cublas_workspace": workspace, "sharding_forward_buffers": fwd_extra,
        "sharding_backward_buffers": bwd_extra, "sharding_step_buffers": per_gpu.step_extra,
        **{f"per_token_layer_{k}": v for k, v in per_layer.items()},
    }
    # The caching allocator's slack is bounded by the largest temporary: the float32 log-probabilities, or
    # the per-tensor optimizers' working set.
    largest = max(T * d.V * FP32, temp if setup.optimizer == "adafactor" else 0)
    return TrainingMemory(
        weights_bytes=w, gradient_bytes=g, optimizer_bytes=s, activation_bytes=max(0, activation),
        step_temporary_bytes=t, forward_peak_bytes=forward_peak, backward_peak_bytes=backward_peak,
        step_peak_bytes=step_peak, peak_allocated_bytes=peak, peak_phase=phase, trainable_parameters=trainable,
        total_parameters=spec.loaded_parameters, largest_transient_bytes=largest, components=components,
        notes=notes)


# ---- several GPUs ----------------------------------------------------------------------------------

class _PerGpu(BaseModel):
    weights: int
    grads: int
    states: int
    temp: int
    forward_extra: int = 0
    backward_extra: int = 0
    step_extra: int = 0
    grads_at_step: int | None = None
    """Gradient bytes still held when optimizer.step() runs; None: ``grads``."""
    grads_persistent: bool = False
    """The gradients live in a buffer allocated for the whole run (DeepSpeed ZeRO-3's partition)."""
    notes: list[str] = []


def largest_module_parameters(spec: ModelSpec) -> int:
    """DeepSpeed's ``largest_layer_params`` (stage3.py model_to_params): the most parameters one module owns
    directly; in a transformer the embedding (or an untied lm_head)."""
    return max(t.numel for t in spec.tensors if t.loaded)


def decoder_layer_parameters(spec: ModelSpec) -> int:
    """Parameters of one decoder layer (FSDP's unit when each layer is wrapped)."""
    return sum(t.numel for t in spec.tensors if t.loaded and t.count == spec.num_hidden_layers)


def _per_gpu_states(spec: ModelSpec, setup: TrainingSetup, *, base: int, trainable: int, grads: int,
                    states: int, temp: int) -> _PerGpu:
    """Weights, gradients, optimizer states and step temporaries that stay on one GPU.

    One GPU, or several under plain DDP: everything is replicated. DeepSpeed ZeRO follows DeepSpeed's own
    estimators (deepspeed/runtime/zero/stage_1_and_2.py estimate_zero2_model_states_mem_needs:
    2P + 18P/N, "18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit";
    stage3.py estimate_zero3_model_states_mem_needs: 4 x largest_layer_params + 18P/N, and with the optimizer
    offloaded 2P (stage 2) or 4 x largest_layer_params + 2P/N (stage 3)).
    """
    n = setup.gpus
    if setup.zero == 0 and not setup.fsdp:
        if n == 1:
            return _PerGpu(weights=base + (trainable * FP32 if setup.method != "full" else 0), grads=grads,
                           states=states, temp=temp)
        # DistributedDataParallel copies every gradient into its all-reduce buckets unless
        # gradient_as_bucket_view=True (torch/nn/parallel/distributed.py, DistributedDataParallel docstring:
        # "the saved memory size will be equal to the total gradients size").
        # The buckets are allocated when the model is wrapped (torch/csrc/distributed/c10d/reducer.cpp
        # Reducer::initialize_buckets: bucket.gradients = at::empty(...)), so they are there from the first
        # forward on (measured on 2 H200s: the forward peak is higher by exactly the gradients' size).
        return _PerGpu(weights=base + (trainable * FP32 if setup.method != "full" else 0), grads=grads,
                       states=states, temp=temp, forward_extra=grads, backward_extra=grads, step_extra=grads,
                       notes=["DDP: gradients counted twice (all-reduce buckets, allocated when the model is "
                              "wrapped); gradient_as_bucket_view=True saves one copy"])
    sixteen = setup.precision != "fp32"
    lora = setup.method != "full"
    # The frozen part (LoRA's base, QLoRA's NF4 base) is replicated except under ZeRO-3 / FSDP.
    frozen = base if lora else 0
    if setup.fsdp:
        # FSDP2 fully_shard (FULL_SHARD): parameters, gradients and optimizer states live as 1/N shards in
        # the parameter dtype; a layer is all-gathered in the compute dtype for its forward and backward and
        # resharded after it (torch/distributed/fsdp/_fully_shard/_fully_shard.py, reshard_after_forward),
        # and the root module (embeddings, final norm, lm_head) stays gathered from its forward to its
        # backward (the root's reshard_after_forward is False). The peaks fall at the loss, at the end of the
        # forward and the start of the backward, where the root is gathered with one decoder layer (the
        # backward prefetches the next): measured on 2 H200s, 5 FSDP2 cases of 2 models, bf16 and fp32
        # shards (tests/fixtures/measurements/distributed-h200.jsonl).
        # A frozen base is gathered as it is stored (a QLoRA base in NF4), a trained one in the compute dtype.
        per_param = base / spec.loaded_parameters if lora else (2 if sixteen else FP32)
        layer = int(decoder_layer_parameters(spec) * per_param)
        root = int((spec.loaded_parameters - decoder_layer_parameters(spec) * spec.num_hidden_layers) * per_param)
        trained = trainable * (FP32 if lora else setup.param_bytes)
        if setup.offload_optimizer:
            # CPUOffloadPolicy keeps the shards, their gradients and the optimizer on the host.
            return _PerGpu(weights=0, grads=0, states=0, temp=0, forward_extra=root + layer,
                           backward_extra=root + layer, step_extra=0,
                           notes=["FSDP with CPU offload: shards, gradients and optimizer states in host memory"])
        return _PerGpu(weights=(frozen + trained) // n, grads=grads // n, states=states // n, temp=temp // n,
                       forward_extra=root + layer, backward_extra=root + layer,
                       notes=["FSDP FULL_SHARD: at the peak the root module (embeddings, lm_head) and one "
                              "decoder layer are all-gathered"])
    # DeepSpeed keeps the model in 16-bit and an fp32 master copy plus fp32 gradients in the optimizer.
    master_setup = setup.model_copy(update={"precision": "fp32"})
    states32 = optimizer_state_bytes(spec, master_setup) if not lora else states
    model16 = trainable * (2 if sixteen else FP32)
    grad16 = trainable * (2 if sixteen else FP32)
    k = (trainable * (FP32 + FP32) if sixteen else 0) + states32  # master + fp32 grads + states
    notes = [f"DeepSpeed ZeRO-{setup.zero}: optimizer_bytes holds DeepSpeed's fp32 master weights and fp32 "
             "gradients" + (" beside the states" if sixteen else "") + "; its communication buckets "
             "(reduce_bucket_size, allgather_bucket_size) come on top"]
    if setup.zero in (1, 2):
        weights_gpu = frozen + model16
        if setup.offload_optimizer:
            return _PerGpu(weights=weights_gpu, grads=0, states=0, temp=0,
                           notes=notes + ["optimizer offloaded: gradients, master weights and states in host "
                                          "memory (DeepSpeed: GPU holds 2P)"])
        grads_gpu = grad16 if setup.zero == 1 else grad16 // n
        if not sixteen:
            return _PerGpu(weights=weights_gpu, grads=grads_gpu, states=k // n, temp=0, notes=notes)
        # Measured on two H200s (DeepSpeed 0.19.8, bf16, stages 1 and 2 alike; distributed-zero-h200.jsonl):
        # between steps only the fp32 master partition and the optimizer states stay (12P/N with AdamW, not
        # the estimator's 16P/N); the fp32 gradient partition exists for the step
        # (stage_1_and_2.py: single_partition_of_fp32_groups[i].grad), beside the optimizer's own
        # temporaries over that partition (torch AdamW foreach: one fp32 partition), and the 16-bit
        # gradients are released before it.
        grads32 = trainable * FP32
        persistent = (k - grads32) // n
        step_temp = step_temporary_bytes(spec, master_setup) // n
        return _PerGpu(weights=weights_gpu, grads=grads_gpu, states=persistent, temp=step_temp,
                       step_extra=grads32 // n, grads_at_step=0,
                       notes=notes + ["measured: the fp32 gradient partition exists only for the optimizer step"])
    gathered = 4 * largest_module_parameters(spec)
    weights_gpu = (frozen + model16) // n
    if setup.offload_optimizer:
        return _PerGpu(weights=weights_gpu, grads=0, states=0, temp=0, forward_extra=gathered,
                       backward_extra=gathered, step_extra=gathered,
                       notes=notes + ["optimizer offloaded: DeepSpeed counts 4 x largest layer + 2P/N on the GPU"])
    if not sixteen:
        return _PerGpu(weights=weights_gpu, grads=0, states=k // n, temp=0, forward_extra=gathered,
                       backward_extra=gathered, step_extra=gathered, notes=notes)
    # Measured on two H200s (DeepSpeed 0.19.8, bf16; distributed-zero-h200.jsonl): between steps the 16-bit
    # parameter and gradient partitions, the reduce bucket (reduce_bucket_size 16-bit elements) and the fp32
    # master partition with the optimizer states stay; forward and backward keep up to
    # stage3_max_live_parameters gathered in 16-bit (parameters reused within stage3_max_reuse_distance are
    # not released: a checkpointed layer's recompute, the tied embedding); the step adds the fp32 gradient
    # partition and the optimizer's temporaries over it, one sub-group at a time (stage3.py step:
    # _prepare_sub_group, _optimizer_step, _release_sub_group).
    grads32 = trainable * FP32
    live = min(DS_MAX_LIVE_PARAMETERS, trainable) * 2
    bucket = DS_REDUCE_BUCKET_ELEMENTS * 2
    sub_group = min(trainable // n, DS_SUB_GROUP_ELEMENTS + largest_module_parameters(spec) // n)
    temp = step_temporary_bytes(spec, master_setup) * sub_group // trainable
    return _PerGpu(weights=weights_gpu, grads=grad16 // n, states=(k - grads32) // n, temp=temp,
                   forward_extra=bucket + live, backward_extra=bucket + live,
                   step_extra=bucket + sub_group * FP32, grads_persistent=True,
                   notes=notes + ["measured: up to stage3_max_live_parameters (1e9) stay gathered in the forward "
                                  "and backward; the reduce bucket (5e8 elements) stays allocated"])
