"""The learner: advantage estimation, the clipped policy loss and batch packing.

``learner.algo.logprobs`` is pure tensor math (no I/O, no models); ``learner.batch`` turns
per-sample token lists into padded tensors aligned with next-token logprobs.
"""
