"""Posteriors q(z|x), priors p(z) and likelihoods p(x|z): each a small module returning a torch Distribution."""
