"""Small classifiers: the metrics' stand-in for the Inception network (trained once on the real
training split and cached as safetensors + JSON), and GM-GAN clustering's classifier.

Images: two conv layers (3x3, 32 and 64 channels, each followed by 2x2 max-pooling), a 128-unit
feature layer (FID's features) and a linear output. Points: an MLP with the same 128-unit
feature layer.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

FEATURES = 128
# Training length: ~15 epochs, clamped to [MIN_STEPS, MAX_STEPS] batches.
MIN_STEPS, MAX_STEPS = 500, 3000


class Classifier(nn.Module):
    def __init__(self, sample_shape: tuple, num_classes: int):
        super().__init__()
        self.sample_shape, self.num_classes = tuple(sample_shape), num_classes
        if len(sample_shape) == 3:
            channels, height, width = sample_shape
            self.body = nn.Sequential(
                nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), FEATURES), nn.ReLU(),
            )
        else:
            width = math.prod(sample_shape)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, FEATURES),
                                      nn.ReLU())
        self.head = nn.Linear(FEATURES, num_classes)

    def forward(self, x: torch.Tensor):
        features = self.body(x)
        return self.head(features), features

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 2000):
        """(softmax probabilities, features) in float32 on the CPU."""
        self.eval()
        device = next(self.parameters()).device
        probs, features = [], []
        for start in range(0, x.shape[0], chunk):
            logits, hidden = self(x[start:start + chunk].to(device))
            probs.append(torch.softmax(logits.double(), 1).float().cpu())
            features.append(hidden.cpu())
        return torch.cat(probs), torch.cat(features)


def fit(x: torch.Tensor, labels: torch.Tensor, num_classes: int, *, seed: int = 0, steps: int | None = None,
        batch_size: int = 128, lr: float = 1e-3, device: torch.device | str = "cpu",
        progress: bool = False) -> Classifier:
    """A Classifier trained with Adam on (x, labels); ``steps`` defaults to ~15 epochs, at least
    MIN_STEPS and at most MAX_STEPS batches."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Classifier(tuple(x.shape[1:]), num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = steps or int(min(MAX_STEPS, max(MIN_STEPS, 15 * math.ceil(x.shape[0] / batch_size))))
    model.train()
    for _ in tqdm(range(steps), desc="classifier", disable=None if progress else True, leave=False):
        index = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator)
        logits, _ = model(x[index].to(device))
        loss = F.cross_entropy(logits, labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def accuracy(model: Classifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    probs, _ = model.predict(x)
    return float((probs.argmax(1) == labels).float().mean())


def cache_dir() -> str:
    return os.environ.get("GMGAN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "gmgan"))


def metrics_classifier(name: str, train, test, num_classes: int, *, progress: bool = False) -> Classifier:
    """The cached classifier for dataset ``name`` (trained on train, its test accuracy stored in
    the JSON next to the weights). The cache key hashes the training data, so a different split
    never reuses a stale classifier."""
    x, labels = train
    digest = hashlib.sha256(x.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()[:16]
    stem = os.path.join(cache_dir(), f"classifier-{name}-{digest}")
    if os.path.isfile(stem + ".json") and os.path.isfile(stem + ".safetensors"):
        with open(stem + ".json") as handle:
            info = json.load(handle)
        model = Classifier(tuple(info["sample_shape"]), info["num_classes"])
        model.load_state_dict(load_file(stem + ".safetensors"))
        model.test_accuracy = info["test_accuracy"]
        return model.eval()
    model = fit(x, labels, num_classes, progress=progress)
    model.cpu()
    model.test_accuracy = accuracy(model, *test)
    os.makedirs(cache_dir(), exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, stem + ".safetensors.tmp")
    os.replace(stem + ".safetensors.tmp", stem + ".safetensors")
    with open(stem + ".json.tmp", "w") as handle:
        json.dump({"sample_shape": list(model.sample_shape), "num_classes": num_classes,
                   "test_accuracy": model.test_accuracy, "train_samples": int(x.shape[0])}, handle)
    os.replace(stem + ".json.tmp", stem + ".json")
    return model
