"""Multi-scene data: the tar-shard format, codecs, converters, the synthetic generator and the streaming dataset.

Nothing here imports nerfstudio; :mod:`zipsplat_ns.datamanagers` adapts it to nerfstudio's DataManager.
"""
