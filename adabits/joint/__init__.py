"""The AdaBits joint step as a library: `joint_step` (forward and backward at every bit-width), its loss
(`JointObjective`: sum or mean, in-place distillation) and which bit-widths a step trains (`StepBits`)."""
from .gradients import GradientAllReduce
from .objective import IN_STEP_TEACHERS, Distill, JointLoss, JointObjective, distillation_loss
from .sampling import StepBits, highest_first, random_assignments
from .step import BitStep, joint_step

__all__ = ["IN_STEP_TEACHERS", "BitStep", "GradientAllReduce", "Distill", "JointLoss", "JointObjective", "StepBits", "distillation_loss",
           "highest_first", "joint_step", "random_assignments"]
