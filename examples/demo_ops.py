"""A short tour of the gmkernels ops, each on every usable backend: what each op is for, and that
the backends agree."""
import torch

import gmkernels

print("backends usable here:", ", ".join(gmkernels.backends()), "| build:", gmkernels.build_info())
torch.manual_seed(0)

# DeLiGAN's prior: 50 Gaussians in a 2-d latent space with learned means and standard deviations.
mu = torch.empty(50, 2).uniform_(-1, 1).requires_grad_()
scale = torch.full((50, 2), 0.2, requires_grad=True)
print("mixture_sample: 4,096 latent codes from a 50-component mixture; the same seed gives the same "
      "codes on every backend:")
for name in gmkernels.backends():
    if name == "triton" and not torch.cuda.is_available():
        continue  # on CPU tensors Triton runs in its interpreter: a correctness tool, slow
    with gmkernels.use_backend(name):
        torch.manual_seed(1)
        z, component = gmkernels.mixture_sample(mu, scale, 4096)
        print(f"  {name:<9} z {tuple(z.shape)}, first row {[round(value, 5) for value in z[0].tolist()]}")

# MD-GAN's discriminator scores a 9-d embedding by a mixture of Gaussians on a simplex's vertices.
vertices = gmkernels.simplex_vertices(9)
embedding = torch.randn(8, 9, dtype=torch.float64)
log_likelihood = gmkernels.mixture_log_likelihood(embedding, vertices, 0.25)
print("mixture_log_likelihood: log-density of 8 embeddings under MD-GAN's simplex mixture:",
      [round(value, 3) for value in log_likelihood[:4].tolist()], "...")

# The inner term of DeLiGAN's modified inception score, without the N x N pairs.
probs = torch.softmax(torch.randn(1000, 10, dtype=torch.float64), 1)
print("class_pairwise_kl: mean KL of 1,000 predictions to the others of their class:",
      round(gmkernels.class_pairwise_kl(probs).mean().item(), 4))

# Minibatch discrimination: how close each sample is to the rest of its batch, per kernel.
M = torch.randn(64, 100, 5)
print("minibatch_discrimination: 64 samples x 100 kernels of 5 dims ->",
      tuple(gmkernels.minibatch_discrimination(M).shape), "closeness features")
