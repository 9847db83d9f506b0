"""A walking controller learned by PPO (Brax on MJX, on a GPU: `experiments/humanoid_walk_ppo.py`): a
multilayer perceptron from the measured state to the motor commands, run here on native MuJoCo by
`policy.walk.simulate` like the designed gait.

Observation (`observation`): the measured q without the root's x and y (height, quaternion w x y z, the
joint angles; nq − 2) and the measured qd (the root's world linear and body angular velocity, the joint
rates; nv), (nq − 2 + nv,). Commands: `CTRL`·tanh(loc), loc the first nu outputs of the network (the mode
of Brax's tanh-normal policy); the network normalises its input by the running mean and sd PPO kept:
x = (obs − mean) / sd, then Dense → swish for each hidden layer, then Dense.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

FORMAT, VERSION = "twin-bayes network walking controller", 1
CTRL = 0.4   # the humanoid's command range (±, control units; N·m / gear)


def observation(q, qd, xp=np):
    """The network's input (..., nq − 2 + nv) from measured q (..., nq), qd (..., nv); xp: numpy or jax.numpy."""
    return xp.concatenate([q[..., 2:], qd], axis=-1)


class WalkNet(NamedTuple):
    """The network: input mean and sd (D,), and its layers [(W (in, out), b (out,))], the last with 2·nu
    outputs (loc, then the exploration scale PPO trained, unused here)."""

    mean: np.ndarray
    std: np.ndarray
    layers: tuple

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Commands (E, nu) for observations obs (E, D)."""
        x = (obs - self.mean) / self.std
        for w, b in self.layers[:-1]:
            x = x @ w + b
            x = x / (1.0 + np.exp(-x))                      # swish
        w, b = self.layers[-1]
        out = x @ w + b
        return CTRL * np.tanh(out[:, :out.shape[1] // 2])

    def controller(self, robot, n: int):
        """`walk.simulate`'s controller for n episodes of `robot`: (live, t, q, qd) -> commands (len(live), nu)."""
        if self.layers[-1][0].shape[1] != 2 * robot.nu or len(self.mean) != robot.nq - 2 + robot.nv:
            raise ValueError(f"a network for {len(self.mean)} inputs and {self.layers[-1][0].shape[1] // 2} commands, "
                             f"not {robot.name}'s {robot.nq - 2 + robot.nv} and {robot.nu}")
        return lambda live, t, q, qd: self.act(observation(q, qd))

    def as_doc(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(),
                "layers": [{"w": w.tolist(), "b": b.tolist()} for w, b in self.layers]}


def from_brax(normalizer, policy_params) -> WalkNet:
    """The network of Brax PPO's trained parameters: `normalizer` (its running statistics: .mean, .std (D,))
    and `policy_params` ({'params': {'hidden_0': {'kernel', 'bias'}, ...}}, Brax's MLP)."""
    layers = policy_params["params"]
    names = sorted(layers, key=lambda k: int(k.split("_")[-1]))
    return WalkNet(np.asarray(normalizer.mean, np.float64), np.asarray(normalizer.std, np.float64),
                   tuple((np.asarray(layers[k]["kernel"], np.float64), np.asarray(layers[k]["bias"], np.float64))
                         for k in names))


def from_doc(doc: dict, path) -> WalkNet:
    """The network of a controller file's document; ValueError naming what is wrong."""
    try:
        mean, std = np.asarray(doc["mean"], np.float64), np.asarray(doc["std"], np.float64)
        layers = tuple((np.asarray(d["w"], np.float64), np.asarray(d["b"], np.float64)) for d in doc["layers"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: corrupt network controller ({err!r})") from None
    sizes = [mean.shape] + [w.shape for w, _ in layers]
    chained = all(w.ndim == 2 and b.shape == (w.shape[1],) for w, b in layers) and len(layers) > 0 and all(
        a[-1] == b[0] for a, b in zip(sizes, sizes[1:])) and mean.shape == std.shape and mean.ndim == 1
    if not chained or layers[-1][0].shape[1] % 2:
        raise ValueError(f"{path}: corrupt network controller (layer shapes {sizes} do not chain)")
    if not all(np.isfinite(a).all() for a in (mean, std, *[x for layer in layers for x in layer])) or (std <= 0).any():
        raise ValueError(f"{path}: corrupt network controller (non-finite weights or a non-positive sd)")
    return WalkNet(mean, std, layers)
