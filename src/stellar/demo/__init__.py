"""The ``stellar demo`` application, beside the library: watch STELLAR learn on a CPU.

``command`` (the ``stellar demo`` command and its run), ``settings``, ``training`` (the
variants), ``supervised`` (the reference trained with labels), ``evaluate`` (every probe of one
model), ``concepts`` (the concept-scenes scores), ``whatwhere`` (equivariance partition and
crop invariance), ``stats`` (standard errors of the gaps), ``ablation`` (the paper's variants
A-D), ``figures`` and ``report``; ``scenes_command`` is ``stellar scenes``, the export of the
concept-scenes benchmark. The scenes themselves are a library dataset
(:mod:`stellar.data.scenes`), since ``stellar train data.source=scenes`` trains on them.
"""
