"""An interrupted and resumed run ends exactly where an uninterrupted one does."""
import json

import pytest
import torch
from safetensors.torch import load_file
from train_support import one_thread, tiny_config  # noqa: F401 (autouse fixture)

from gmgan import ConfigError, Trainer
from gmgan.checkpoint import latest


def state(trainer):
    tensors = {f"G.{k}": v for k, v in trainer.G.state_dict().items()}
    tensors.update({f"D.{k}": v for k, v in trainer.D.state_dict().items()})
    for name, optimizer in (("opt_g", trainer.opt_g), ("opt_d", trainer.opt_d)):
        for index, entries in optimizer.state_dict()["state"].items():
            tensors.update({f"{name}.{index}.{k}": v for k, v in entries.items()})
    tensors["noise_rng"] = trainer.noise_rng.get_state()
    tensors["data_rng"] = trainer.data_rng.get_state()
    return tensors


def assert_identical(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ after resume: {different[:5]}"


# deligan: learned prior + per-row components; wgan-gp: randomness inside the loss and 5 critic
# steps; infogan and fgan: the new variants; gmgan-supervised on digits: conv nets with batch-norm buffers, labels, epochs wrapping.
@pytest.mark.parametrize("changes", [
    dict(variant="deligan", assignment="per_row", components=16, lr_halve_every=5),
    dict(variant="wgan-gp"),
    dict(variant="infogan"),                       # codes drawn from the noise generator, Q in D's state
    dict(variant="fgan", divergence="reverse-kl"),
    dict(variant="gmgan-supervised", dataset="digits", mixture="dynamic", batch_size=500),
])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, changes):
    steps = dict(steps=12, checkpoint_every=4)
    straight = Trainer(tiny_config(tmp_path, run_name="straight", **steps, **changes))
    straight.run(evaluate_end=False)
    interrupted = Trainer(tiny_config(tmp_path, run_name="resumed", **steps, **changes))
    interrupted.run(until=7, evaluate_end=False)      # stops after step 7, between checkpoints
    assert latest(interrupted.checkpoint_dir).endswith("step_0000007")
    resumed = Trainer.from_run_dir(str(tmp_path / "resumed"))
    assert resumed.step == 7
    resumed.run(evaluate_end=False)
    assert resumed.step == 12
    assert_identical(state(straight), state(resumed))


def test_resume_from_periodic_checkpoint_after_a_crash(tmp_path):
    """A run killed without a final save resumes from its last periodic checkpoint."""
    config = dict(variant="mdgan", steps=10, checkpoint_every=3)
    straight = Trainer(tiny_config(tmp_path, run_name="straight", **config))
    straight.run(evaluate_end=False)
    crashed = Trainer(tiny_config(tmp_path, run_name="crashed", **config))
    for _ in range(5):        # steps 1..5 without the loop: only the step-3 checkpoint exists
        crashed._set_learning_rates()
        crashed.train_step()
        crashed.step += 1
        if crashed.step % 3 == 0:
            crashed.save_checkpoint()
    resumed = Trainer.from_run_dir(str(tmp_path / "crashed"))
    assert resumed.step == 3
    resumed.run(evaluate_end=False)
    assert_identical(state(straight), state(resumed))


def test_checkpoint_is_safetensors_and_json_only(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, variant="deligan"))
    trainer.run(evaluate_end=False)
    stem = latest(trainer.checkpoint_dir)
    tensors = load_file(stem + ".safetensors")
    with open(stem + ".json") as handle:
        info = json.load(handle)
    assert info["step"] == 4 and info["config"]["variant"] == "deligan"
    assert tensors["rng.data"].dtype == torch.uint8 and "G.prior.mu" in tensors
    assert any(k.startswith("optim.G.") for k in tensors)


def test_resume_refuses_a_changed_model(tmp_path):
    Trainer(tiny_config(tmp_path, run_name="run")).run(until=2, evaluate_end=False)
    with pytest.raises(ConfigError, match="cannot change z_dim"):
        Trainer.from_run_dir(str(tmp_path / "run"), {"z_dim": 5})
    longer = Trainer.from_run_dir(str(tmp_path / "run"), {"steps": 6})   # extending is allowed
    assert longer.config.steps == 6 and longer.step == 2


def test_cli_resume_continues_to_the_same_weights(tmp_path):
    from gmgan.cli import main

    common = dict(steps=6, batch_size=64, g_hidden=[16], d_hidden=[16], variant="gmgan", mixture="dynamic")
    straight = Trainer(tiny_config(tmp_path, run_name="straight", **common))
    straight.run(evaluate_end=False)
    flags = ["--batch-size", "64", "--g-hidden", "16", "--d-hidden", "16", "--variant", "gmgan", "--mixture",
             "dynamic", "--log-every", "2", "--checkpoint-every", "1000", "--eval-samples", "200"]
    assert main(["train", *flags, "--steps", "3", "--no-progress", "--out-dir", str(tmp_path), "--run-name", "split"]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--steps", "6"]) == 0   # extend the finished run
    resumed = load_file(latest(str(tmp_path / "split" / "checkpoints")) + ".safetensors")
    expected = load_file(latest(straight.checkpoint_dir) + ".safetensors")
    assert_identical(expected, resumed)
