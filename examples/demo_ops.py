"""A short tour of the gmkernels ops, each on every usable backend."""
import torch

import gmkernels

print("backends:", gmkernels.backends(), "| build:", gmkernels.build_info())
torch.manual_seed(0)

# DeLiGAN prior: 50 components in a 2-d latent space, diagonal std.
mu = torch.empty(50, 2).uniform_(-1, 1).requires_grad_()
sigma = torch.full((50, 2), 0.2, requires_grad=True)
for name in gmkernels.backends():
    if name == "triton":
        continue  # the interpreter is a correctness tool on CPU
    with gmkernels.use_backend(name):
        torch.manual_seed(1)
        z, component = gmkernels.mixture_sample(mu, sigma, 4096)
        print(f"mixture_sample[{name}]: z {tuple(z.shape)}, first row {z[0].tolist()}")

# MD-GAN's simplex mixture scores a 9-d embedding.
vertices = gmkernels.simplex_vertices(9)
embedding = torch.randn(8, 9, dtype=torch.float64)
print("mixture_log_likelihood:", gmkernels.mixture_log_likelihood(embedding, vertices, 0.25)[:4].tolist())

# mIS's inner term: mean KL to the samples of one's predicted class.
probs = torch.softmax(torch.randn(1000, 10, dtype=torch.float64), 1)
print("class_pairwise_kl mean:", gmkernels.class_pairwise_kl(probs).mean().item())

# Minibatch discrimination features.
M = torch.randn(64, 100, 5)
print("minibatch_discrimination:", tuple(gmkernels.minibatch_discrimination(M).shape))
