"""Batch jobs built on batchcore, installed as ``batchcore.processors``: CSV crunching (``csv``),
image filtering (``images``) and the ``batchcore`` command (``cli``); ``errors`` holds their
exception tree, ``files`` the atomic writes, ``tables`` the text tables."""
