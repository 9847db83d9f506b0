"""Policies optimised through the twin and moved to the real robot.

controller (Policy, Task, the command law), closed_loop (the policy on the twin
and on native MuJoCo), objective (mean / CVaR over particles, gradients),
optimize (optax), experiment (training particles, twin fits, real scores),
tasks (the experiments' tasks and hidden truths), export (domain randomisation
for Brax / MuJoCo Playground), commands (the `export-dr` CLI command).
"""
