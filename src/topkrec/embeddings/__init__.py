"""Two-tower embedding pretraining (``topkrec pretrain``, DESIGN §2) and the embeddings-directory loader.

``load_embeddings(dir, dataset)`` is what later stages import; the training code lives in
``topkrec.embeddings.train`` (imports torch).
"""

from topkrec.embeddings.artifact import (
    PretrainedEmbeddings,
    dataset_fingerprint,
    load_embeddings,
    write_embeddings,
)

__all__ = ["PretrainedEmbeddings", "dataset_fingerprint", "load_embeddings", "write_embeddings"]
