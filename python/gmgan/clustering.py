"""GM-GAN's unsupervised clustering (Algorithm 2 of Ben-Yosef & Weinshall 2018) and its scores.

1. train an unsupervised GM-GAN with K Gaussians on X (gmgan.trainer);
2. for each Gaussian k draw M latents from N(mu_k, Sigma_k) and generate X_k = G(Z_k), labelled k;
3. train a K-way classifier c on the union of the X_k (gmgan.classifier);
4. cluster(x) = argmax_k c(x) for every x in X.
InfoGAN (gmgan.variants.infogan) clusters without steps 2-3: cluster(x) = argmax of Q's
categorical code on x. Scored by ACC (best one-to-one map of clusters to classes, Hungarian assignment by
scipy.optimize.linear_sum_assignment) and NMI (sklearn), with k-means on the raw X (sklearn,
n_init=10) as the baseline.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from .classifier import fit
from .config import ConfigError

_CLUSTER_SEED = 4_242_424


def clustering_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """max over one-to-one maps m of clusters to classes of mean(m(cluster) == label)."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    classes, label_index = np.unique(labels, return_inverse=True)
    groups, cluster_index = np.unique(clusters, return_inverse=True)
    contingency = np.zeros((len(groups), len(classes)), dtype=np.int64)
    np.add.at(contingency, (cluster_index, label_index), 1)
    rows, columns = linear_sum_assignment(contingency, maximize=True)
    return float(contingency[rows, columns].sum() / len(labels))


def scores(labels, clusters) -> dict:
    return {"acc": clustering_accuracy(labels, clusters),
            "nmi": float(normalized_mutual_info_score(labels, clusters))}


@torch.no_grad()
def generate_per_component(trainer, per_component: int, temperature: float = 1.0):
    """(x, k): per_component samples of every Gaussian k of the generator's prior."""
    prior = trainer.G.prior
    if not hasattr(prior, "sample_component"):
        raise ConfigError(f"clustering needs a mixture prior; variant {trainer.config.variant} has none (use gmgan)")
    if trainer.config.conditional:
        raise ConfigError("clustering is unsupervised: train the GM-GAN without --conditional")
    generator = torch.Generator(device=trainer.device).manual_seed(_CLUSTER_SEED + trainer.config.seed)
    trainer.G.eval()
    xs, ks = [], []
    for k in range(prior.num_components):
        xs.append(trainer.sample_component(k, per_component, generator, temperature).cpu())
        ks.append(torch.full((per_component,), k, dtype=torch.int64))
    trainer.G.train()
    return torch.cat(xs), torch.cat(ks)


@torch.no_grad()
def infogan_clusters(trainer, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """argmax of InfoGAN's Q categorical logits on x, in batches (D in eval mode)."""
    if trainer.config.conditional:
        raise ConfigError("clustering is unsupervised: train the InfoGAN without --conditional")
    trainer.D.eval()
    parts = [trainer.variant.category_logits(trainer.D, x[begin:begin + batch_size].to(trainer.device)).argmax(1)
             for begin in range(0, len(x), batch_size)]
    trainer.D.train()
    return torch.cat(parts).cpu()


def cluster(trainer, per_component: int = 1000, *, classifier_steps: int | None = None,
            temperature: float = 1.0) -> dict:
    """ACC / NMI on the trainer's training set of the method (GM-GAN's Algorithm 2, or InfoGAN's
    Q), and of k-means with the same K. Keys: method, <key>_acc / <key>_nmi for key = gmgan or
    infogan, kmeans_acc / kmeans_nmi."""
    config = trainer.config
    x, labels = trainer.dataset.get(torch.arange(len(trainer.dataset)))
    num_components = getattr(trainer.G.prior, "num_components", None)
    if hasattr(trainer.variant, "category_logits"):
        method, key = "InfoGAN", "infogan"
        clusters = infogan_clusters(trainer, x).numpy()
    else:
        method, key = "GM-GAN", "gmgan"
        generated, component = generate_per_component(trainer, per_component, temperature)
        classifier = fit(generated, component, num_components, seed=config.seed, steps=classifier_steps,
                         progress=config.progress)
        probs, _ = classifier.predict(x)
        clusters = probs.argmax(1).numpy()
    kmeans = KMeans(n_clusters=num_components, n_init=10, random_state=config.seed)
    kmeans_clusters = kmeans.fit_predict(x.flatten(1).double().numpy())
    labels = labels.numpy()
    ours, km = scores(labels, clusters), scores(labels, kmeans_clusters)
    return {"dataset": config.dataset, "seed": config.seed, "method": method, "components": num_components,
            "per_component": per_component, f"{key}_acc": ours["acc"], f"{key}_nmi": ours["nmi"],
            "kmeans_acc": km["acc"], "kmeans_nmi": km["nmi"], "samples": int(len(labels))}
