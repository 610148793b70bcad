"""The ``sync`` engine: the storage as a browsable mirror of a directory source (:mod:`.engine`).

One object per file under ``DATA_ID/mirror/SOURCE/<relative path>``, readable by people and other tools;
each backup records a manifest of what the mirror held, with digests, so ``list``, ``verify`` and
``restore`` work. The layout and its rules are in docs/engines.md, section *The sync engine*.
"""
