"""The runtime: one turn from stored message to committed change (``engine``), the composer
and renderer of replies, the dispatcher, the sender, the timer sweeper, the status poller,
campaigns, and the one assembly that builds them (``assembly``). No HTTP here: the provider
is reached through the ``ProviderAPI`` it is given."""
