"""The counting reference: plain numpy, every matrix product recorded.

Nothing here imports the formula modules (``flopsbook.flops`` and friends): the tests hold the
formulas and this independent count against each other. ``counter`` records matmul FLOPs (by
component and pass), other work and saved tensors; ``model`` is a transformer built from a
``flopsbook.spec.Transformer`` with a hand-written backward pass, counted by it; ``collectives``
runs collectives and data-parallel training steps over simulated devices, counting every
message; ``xla`` (opt-in, it imports JAX) compiles data-parallel and FSDP steps with a real SPMD
compiler on host CPU devices and reads the collectives it emits; ``model_parallel`` splits the
reference transformer over simulated devices by tensor (and sequence), pipeline and expert
parallelism, counting every message.
"""

from importlib import import_module

from .counter import (COMPONENTS, ELEMENTWISE_FLOPS, PASSES, FlopCounter, count_flops,
                      current_counters, elementwise, in_layer, matmul, save_for_backward)

__all__ = ["COMPONENTS", "ELEMENTWISE_FLOPS", "PASSES", "Collective", "DataParallelStep",
           "ExpertParallelStep", "FlopCounter", "Message", "PipelineStep",
           "ReferenceTransformer", "TensorParallelStep", "causal_mask", "count_flops",
           "current_counters", "data_parallel_step", "elementwise", "expert_parallel_dispatch",
           "in_layer", "matmul", "pipeline_parallel_step", "save_for_backward",
           "tensor_parallel_step"]

_FROM_MODEL = {"ReferenceTransformer", "causal_mask"}
# The collectives' records and the training step; the collectives themselves (all_reduce,
# broadcast, ...) keep their module's name: flopsbook.reference.collectives.all_reduce.
_FROM_COLLECTIVES = {"Collective", "DataParallelStep", "Message", "data_parallel_step"}
# The model-parallel steps; the schedule helpers keep their module's name.
_FROM_MODEL_PARALLEL = {"ExpertParallelStep", "PipelineStep", "TensorParallelStep",
                        "expert_parallel_dispatch", "pipeline_parallel_step",
                        "tensor_parallel_step"}


def __getattr__(name):
    # The model loads on first use: `import flopsbook` only needs the counter.
    if name in _FROM_MODEL:
        return getattr(import_module(".model", __name__), name)
    if name in _FROM_COLLECTIVES:
        return getattr(import_module(".collectives", __name__), name)
    if name in _FROM_MODEL_PARALLEL:
        return getattr(import_module(".model_parallel", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
