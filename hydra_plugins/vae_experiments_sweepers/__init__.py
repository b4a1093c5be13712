"""vae-train's sweepers. Hydra instantiates a sweeper only from the ``hydra_plugins`` package, hence this one."""
