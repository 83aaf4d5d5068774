"""The compression core: pure maths on a policy (layer graph and kinds, clustering, fibers, data
fibers, criteria, the quotient, output divergence, adapters for users' own modules).

Imports torch, numpy and scipy only: no files, no envs, no config, no printing and no pufferlib,
so that a user on any stack can compress a policy with it.
"""
