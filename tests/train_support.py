"""Shared helpers of the tests/test_train_*.py files (the gmgan training layer)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Test this checkout's gmgan (python/, setup.py's package_dir), even when another checkout is
# installed in editable mode: sys.path entries take precedence over the editable finder.
sys.path.insert(0, str(ROOT / "python"))

import gmkernels  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from gmgan import build_config  # noqa: E402

# Small nets and batches: every test trains in well under a second per step.
TINY = dict(steps=4, batch_size=64, g_hidden=[32, 32], d_hidden=[32, 32], progress=False, eval_samples=500,
            checkpoint_every=1000, log_every=2)
TINY_IMAGES = dict(TINY, dataset="digits", batch_size=32, g_channels=8, d_channels=8, g_hidden=[32],
                   d_hidden=[32], z_dim=8, components=10, stacked_size=2000)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets train fastest on one thread (and the shared machine stays usable); the previous
    count is restored. Autouse in every module that imports it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(tmp_path, **changes):
    base = TINY_IMAGES if changes.get("dataset") in ("digits", "stacked-digits") else TINY
    return build_config(dict(base, out_dir=str(tmp_path), **changes))


def usable_backends():
    return [b for b in ("reference", "cpp", "triton", "cuda") if b in gmkernels.backends()]


def skip_if_op_missing(error: NotImplementedError):
    """An op this variant uses has no kernel on the chosen backend yet (it lands later)."""
    pytest.skip(f"not implemented on this backend yet: {error}")


def run_cli(*args, env_extra=None, timeout=240):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "python"),
                                                         os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)   # conftest's test switch; the CLI does not need Triton
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "gmgan", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(ROOT))
