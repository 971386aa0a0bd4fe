"""The ``stellar demo`` application, beside the library: watch STELLAR learn on a CPU.

``command`` (the ``stellar demo`` command and its run), ``settings``, ``training`` (the
variants), ``evaluate`` (every metric of one model), ``concepts`` (the concept-scenes scores),
``figures`` and ``report``; ``scenes_command`` is ``stellar scenes``, the export of the
concept-scenes benchmark. The scenes themselves are a library dataset
(:mod:`stellar.data.scenes`), since ``stellar train data.source=scenes`` trains on them.
"""
