"""Secure aggregation by secret sharing (Flower-free building blocks and protocol).

Each site adds pairwise masks that cancel in the sum and a self mask whose seed it
Shamir-shares among the other sites, so the server learns only the sum of the surviving
sites' inputs (Bonawitz et al., CCS 2017). The modules:

* :mod:`.fixedpoint` - floats and counts to the ring Z_(2^64) and back;
* :mod:`.crypto` - key agreement (X25519), authenticated encryption (AES-GCM), identity
  signatures, the mask generator (ChaCha20) and Shamir sharing (pycryptodome);
* :mod:`.protocol` - the site and server state machines of one round;
* :mod:`.reference` - the plaintext sum the protocol must reproduce, and an in-process
  driver of the protocol with the same signature, for tests and benchmarks.
"""
