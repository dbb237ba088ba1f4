"""Image jobs: ``filters`` is the filter registry and chains, ``io`` decoding and saving, ``jobs``
planning and running every (image x filter chain)."""
