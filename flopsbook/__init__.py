"""flopsbook: the formulas of the FLOPs Book, small and tested.

Modules mirror the book's parts: ``spec`` (the model description), ``registry`` (published
models and accelerators), ``flops``, ``memory``, ``inference``, ``scaling``, ``communication``,
``parallelism``, ``units``, and
``reference`` (a counting numpy model that the formulas are checked against).
``flopsbook.viz`` (plots and calculators) is imported on first use so that ``import flopsbook``
stays fast.
"""

from importlib import import_module

from .communication import (collective_bytes, collective_steps, collective_time,
                            data_parallel_bytes, dp_overlap_tokens)
from .exercises import check
from .flops import (context_flops_ratio, crossover_seq_len, flops_per_token, hfu, layer_flops,
                    linear_attention_flops, linear_attention_state_bytes, matmul_bytes,
                    matmul_flops, mfu, roofline_time, training_flops, training_time)
from .inference import (critical_batch, decode_step_time, expected_experts, generation_flops,
                        kv_cache_bytes, max_batch, serving_cost)
from .memory import (activation_breakdown, activation_memory, largest_micro_batch,
                     memory_budget, training_memory)
from .parallelism import (Layout, expert_parallel_bytes, parallel_layouts, pipeline_bubble,
                          pipeline_bubble_time, pipeline_p2p_bytes, ring_attention_block,
                          tensor_parallel_bytes)
from .reference.counter import count_flops
from .registry import (Hardware, TrainingRun, hardware, hardwares, model, models,
                       training_run, training_runs)
from .scaling import (ScalingFit, chinchilla_loss, chinchilla_optimal, inference_aware_optimal,
                      scaling_fit, scaling_fits, tokens_for_loss)
from .spec import Transformer, param_breakdown, param_count
from .units import (format_bytes, format_count, format_duration, format_flops, format_rate,
                    format_sci, parse_bytes, parse_flop_rate, parse_quantity, parse_rate)

__version__ = "0.1.0"

__all__ = [
    "Hardware", "Layout", "ScalingFit", "Transformer", "activation_breakdown", "activation_memory",
    "check", "chinchilla_loss", "chinchilla_optimal", "collective_bytes", "collective_steps",
    "collective_time", "context_flops_ratio", "count_flops", "data_parallel_bytes",
    "dp_overlap_tokens", "expert_parallel_bytes",
    "critical_batch", "crossover_seq_len", "decode_step_time", "expected_experts",
    "flops_per_token",
    "format_bytes", "format_count", "format_duration", "format_flops", "format_rate",
    "format_sci", "generation_flops", "hardware", "hardwares", "hfu",
    "inference_aware_optimal", "kv_cache_bytes", "largest_micro_batch", "layer_flops",
    "linear_attention_flops", "linear_attention_state_bytes",
    "matmul_bytes", "matmul_flops", "max_batch", "memory_budget", "mfu", "model", "models",
    "parallel_layouts",
    "param_breakdown", "param_count", "parse_bytes", "parse_flop_rate", "parse_quantity",
    "parse_rate", "pipeline_bubble", "pipeline_bubble_time", "pipeline_p2p_bytes",
    "ring_attention_block", "roofline_time", "scaling_fit", "scaling_fits", "serving_cost",
    "tensor_parallel_bytes", "tokens_for_loss", "training_flops", "training_memory", "training_time",
    "TrainingRun", "training_run", "training_runs",
]

_LAZY = {"viz", "reference", "measure"}


def __getattr__(name):
    # Lazy so that matplotlib and ipywidgets load only in notebooks that draw.
    if name in _LAZY:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'flopsbook' has no attribute {name!r}")
