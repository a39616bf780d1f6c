"""Benchmark evaluation (reference §6): registered benchmarks and index files, target-pose refinement, the resumable
runner behind ``zipsplat-ns eval`` and the pipeline's ``ns-eval`` path.

Submodules are imported lazily (``zipsplat_ns.eval.runner`` pulls in torch and the renderer)::

    from zipsplat_ns.eval.benchmarks import resolve_benchmark, BENCHMARKS
    from zipsplat_ns.eval.pose_refine import refine_poses, PRESETS
    from zipsplat_ns.eval.runner import evaluate, run_benchmark_for_pipeline, gaussians_from_inputs
"""
