"""Adjoint Guidance core: exponential-integrator samplers and their gradients, in pure torch.

Everything is derived in ComfyUI's own coordinates (x = α(σ)·x0 + σ·ε) and works with
any denoiser callable D(x, σ, cond) → x0. No ComfyUI import: usable standalone.

    import adjoint
    traj = adjoint.sample(D, x_T, sigmas, cond)                     # forward only
    res = adjoint.gradient(D, x_T, sigmas, cond, loss_fn)           # exact discrete adjoint
    opt = adjoint.optimize(D, eps, sigmas, cond, loss_fn, iterations=50)

Modules: coords (α, λ, σ grids), conditioning (keyframe schedules and blends), solvers
(forward steps, trajectory), adjoints (gradient methods), api (sample, gradient),
optimize (Adam loop), counting (network-call accounting), memory (the memory budget of
kept graphs and how a step's graph is measured), timeline (keyframe timing), checks
(argument validation: refusals read "<function>: <argument>: <problem>").

Conventions: N = len(sigmas) − 1 sampling steps, the final denoise to σ = 0 included;
the grid helpers take (steps, sigma_min, sigma_max); a keyframe at fraction f is active
from step ⌊f·N⌋; `loss` in GradientResult and OptimizeResult is a Python float.
"""
from .adjoints import (METHODS, AdjointDEIS1, AdjointDEIS2M, AdjointDEISSDE,
                       ExactDiscreteAdjoint, GradientMethod, get_method)
from . import memory
from .api import GradientResult, KeptGraphs, gradient, sample
from .conditioning import ScheduledConditioning, lerp, slerp
from .coords import Grid, karras_sigmas, make_grid, uniform_lambda_sigmas
from .counting import CallCounts
from .optimize import IterationInfo, OptimizeResult, SampleRun, optimize
from .solvers import (SOLVERS, DPMSolverPP1, DPMSolverPP2M, SDEDPMSolverPP1, Solver,
                      StepCoefficients, Trajectory, get_solver)
from .timeline import Blend, Position, Timeline

__all__ = [
    "sample", "gradient", "optimize",
    "GradientResult", "KeptGraphs", "OptimizeResult", "SampleRun", "IterationInfo", "Trajectory", "CallCounts",
    "ScheduledConditioning", "Timeline", "Position", "Blend", "lerp", "slerp",
    "Grid", "make_grid", "uniform_lambda_sigmas", "karras_sigmas",
    "SOLVERS", "Solver", "DPMSolverPP1", "DPMSolverPP2M", "SDEDPMSolverPP1", "StepCoefficients",
    "get_solver",
    "METHODS", "GradientMethod", "ExactDiscreteAdjoint", "AdjointDEIS1", "AdjointDEIS2M",
    "AdjointDEISSDE", "get_method", "memory",
]
