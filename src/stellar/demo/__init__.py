"""The ``stellar demo`` application, beside the library: watch STELLAR learn on a CPU.

``stellar scenes`` (``scenes_command``) exports the concept scenes; the scenes themselves are a
library dataset (:mod:`stellar.data.scenes`), since ``stellar train data.source=scenes`` uses them.
"""
