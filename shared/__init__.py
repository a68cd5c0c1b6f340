"""Code every renderfarm component uses: job schema, config, storage, Redis keys."""
