"""One throughput measurement of one trainer, run as a child of ``benchmarks/upstream_sps.py``.

    python benchmarks/upstream_driver.py TRAINER GAME SETTINGS_JSON

TRAINER is ``pufferfiber`` (run with the project's interpreter, the package on ``PYTHONPATH``),
``pufferlib-2.0.6`` (run with that build's interpreter, from its run folder holding the sdist's
``demo.py`` and ``clean_pufferl.py``) or ``pufferlib-3.0`` (run with that build's interpreter).

Every trainer is timed the same way, by this file, not by the trainers' dashboards: the trainer
is built (env, policy, optimizer, buffers), one warm-up epoch (collect + update) runs untimed,
then whole epochs run until ``seconds`` of wall time (``time.perf_counter``) have passed. The
result is the agent steps the trainer itself counted over those timed epochs (its
``global_step``: pufferfiber adds the batch size per epoch, 2.0.6 and 3.0 add the live agents of
every env step they collect) divided by their wall time. Start-up, the warm-up and the
shutdown are excluded for all three. The last line printed is
``RESULT sps=<float> steps=<int> seconds=<float> epochs=<int>`` (upstream dashboards print
around it).

This file imports only the standard library at the top: it runs under three interpreters, two
of which have no pufferfiber and a different pufferlib.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any


def result_line(steps: int, seconds: float, epochs: int) -> str:
    """The line ``upstream_sps.parse_result`` reads."""
    return f"RESULT sps={steps / seconds:.1f} steps={steps} seconds={seconds:.3f} epochs={epochs}"


def env_kwargs_for(env_cls: Any, env: dict[str, Any], num_envs: int) -> dict[str, Any]:
    """Our [env] settings restricted to the keys the upstream constructor takes, plus num_envs.

    The games are the same C code in all three, but a key one version added (or dropped) would
    be a TypeError in the other; the constructor's own signature says what it takes."""
    accepted = inspect.signature(env_cls.__init__).parameters
    return {**{k: v for k, v in env.items() if k in accepted}, "num_envs": num_envs}


def timed(
    epoch: Callable[[], None], steps: Callable[[], int], seconds: float
) -> tuple[int, float, int]:
    """One untimed warm-up epoch, then whole epochs until ``seconds`` have passed.

    Returns (agent steps counted by the trainer, wall seconds, epochs) over the timed epochs."""
    epoch()  # warm-up: env reset, allocator growth, first-call overheads
    start_steps, start, n = steps(), time.perf_counter(), 0
    while True:
        epoch()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return int(steps() - start_steps), elapsed, n


def run_pufferfiber(game: str, s: dict[str, Any]) -> tuple[int, float, int]:
    """pufferfiber's Trainer at benchmarks/ocean_sps.py's reference settings (serial vec env)."""
    from pathlib import Path

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ocean_sps import reference_trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = reference_trainer(game, int(s["torch_threads"]), Path(tmp))
        measured = timed(trainer.train_epoch, lambda: trainer.global_step, s["seconds"])
        trainer.close()
    return measured


def run_pufferlib_206(game: str, s: dict[str, Any]) -> tuple[int, float, int]:
    """PufferLib 2.0.6's clean_pufferl (create / evaluate / train) with demo.py's policy maker.

    This is what ``demo.py --mode train`` runs per epoch, minus its config parsing: the same
    ``clean_pufferl.create``, then ``evaluate`` + ``train`` per epoch."""
    import torch

    # The build's run folder holds 2.0.6's demo.py and clean_pufferl.py; imported by name at
    # run time (the repository has a demo.py of its own, which a static import would name).
    sys.path.insert(0, os.getcwd())
    clean_pufferl = importlib.import_module("clean_pufferl")
    demo = importlib.import_module("demo")
    import pufferlib
    import pufferlib.environment
    import pufferlib.ocean
    import pufferlib.vector

    torch.set_num_threads(s["torch_threads"])
    make_env = pufferlib.ocean.env_creator(game)
    env_cls = make_env.func if hasattr(make_env, "func") else make_env
    vecenv = pufferlib.vector.make(
        make_env,
        env_kwargs=env_kwargs_for(env_cls, s["env"], s["num_envs"]),
        backend=pufferlib.environment.PufferEnv,
    )
    module = pufferlib.ocean.torch
    args = {
        "policy": {"hidden_size": s["hidden_size"]},
        "rnn": {"input_size": s["hidden_size"], "hidden_size": s["hidden_size"]},
        "train": {"device": "cpu"},
    }
    policy = demo.make_policy(vecenv.driver_env, module.Policy, module.Recurrent, args)
    with tempfile.TemporaryDirectory() as tmp:
        train = dict(
            seed=s["seed"], torch_deterministic=True, cpu_offload=False, device="cpu",
            total_timesteps=10**12, learning_rate=s["learning_rate"], anneal_lr=False,
            gamma=s["gamma"], gae_lambda=s["gae_lambda"], update_epochs=s["update_epochs"],
            norm_adv=True, clip_coef=s["clip_coef"], clip_vloss=True, vf_clip_coef=0.1,
            vf_coef=s["vf_coef"], ent_coef=s["ent_coef"], max_grad_norm=s["max_grad_norm"],
            target_kl=None, batch_size=s["batch_size"], minibatch_size=s["minibatch_size"],
            bptt_horizon=s["bptt_horizon"], compile=False, compile_mode="default",
            checkpoint_interval=10**9, data_dir=tmp,
        )  # fmt: skip
        config = pufferlib.namespace(**train, env=game, exp_id="upstream-sps")
        data = clean_pufferl.create(config, vecenv, policy)

        def epoch() -> None:
            clean_pufferl.evaluate(data)
            clean_pufferl.train(data)

        measured = timed(epoch, lambda: int(data.global_step), s["seconds"])
        data.utilization.stopped = True  # its monitor thread loops until this flag is set
        vecenv.close()
    return measured


def run_pufferlib_30(game: str, s: dict[str, Any]) -> tuple[int, float, int]:
    """PufferLib 3.0's PuffeRL (what ``puffer train`` runs), its own config with our shapes."""
    import torch

    sys.argv = [sys.argv[0]]  # load_config parses the command line
    import pufferlib.ocean
    import pufferlib.pufferl as pufferl

    torch.set_num_threads(s["torch_threads"])
    args = pufferl.load_config(game)
    make_env = pufferlib.ocean.env_creator(game)
    env_cls = make_env.func if hasattr(make_env, "func") else make_env
    args["env"] = env_kwargs_for(env_cls, s["env"], s["num_envs"])
    # One env object holding all the games, as ours and 2.0.6's; 3.0's trainer needs the thin
    # Serial wrapper around it (it reads ``agents_per_batch``), the bare env has none.
    args["vec"] = {"backend": "Serial", "num_envs": 1}
    args["policy"] = {"hidden_size": s["hidden_size"]}
    args["rnn"] = {"input_size": s["hidden_size"], "hidden_size": s["hidden_size"]}
    with tempfile.TemporaryDirectory() as tmp:
        args["train"].update(
            device="cpu", optimizer="adam", precision="float32", compile=False,
            total_timesteps=10**12, batch_size=s["batch_size"],
            minibatch_size=s["minibatch_size"], max_minibatch_size=s["minibatch_size"],
            bptt_horizon=s["bptt_horizon"], update_epochs=s["update_epochs"],
            learning_rate=s["learning_rate"], gamma=s["gamma"], gae_lambda=s["gae_lambda"],
            clip_coef=s["clip_coef"], vf_coef=s["vf_coef"], ent_coef=s["ent_coef"],
            max_grad_norm=s["max_grad_norm"], seed=s["seed"], checkpoint_interval=10**9,
            data_dir=tmp, anneal_lr=False,
        )  # fmt: skip
        vecenv = pufferl.load_env(game, args)
        policy = pufferl.load_policy(args, vecenv)
        trainer = pufferl.PuffeRL(dict(**args["train"], env=game), vecenv, policy)

        def epoch() -> None:
            trainer.evaluate()
            trainer.train()

        measured = timed(epoch, lambda: int(trainer.global_step), s["seconds"])
        trainer.utilization.stop()
        vecenv.close()
    return measured


RUNNERS: dict[str, Callable[[str, dict[str, Any]], tuple[int, float, int]]] = {
    "pufferfiber": run_pufferfiber,
    "pufferlib-2.0.6": run_pufferlib_206,
    "pufferlib-3.0": run_pufferlib_30,
}


def main() -> None:
    """``TRAINER GAME SETTINGS_JSON``: one measurement, its RESULT line last."""
    if len(sys.argv) != 4 or sys.argv[1] not in RUNNERS:
        names = ",".join(RUNNERS)
        print(f"usage: upstream_driver.py {{{names}}} GAME SETTINGS_JSON", file=sys.stderr)
        raise SystemExit(2)
    trainer, game, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    steps, seconds, epochs = RUNNERS[trainer](game, settings)
    print("\n" + result_line(steps, seconds, epochs), flush=True)


if __name__ == "__main__":
    main()
